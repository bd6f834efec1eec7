"""A real `hpcffn submit` (not --dry-run), then status, submit --resume and cancel, at 10,000 / 100,000 tiles.

With MaxArraySize 1001 a 100,000-tile plan is hundreds of sbatch calls (its arrays split into
pieces), and what submit records after each call must not cost the whole state.json (tens of MB)
each time. Stand-in `sbatch` (prints a new id, counts its calls; `--test-only` accepts),
`scontrol show config` (MaxArraySize = 1001), `squeue`/`sacct` (every submitted array pending as
one record; task 0 of infer_g0's first piece FAILED, so --resume resubmits it and what waits on it)
and `scancel` are put on PATH. Each figure is a fresh `hpcffn` process, timed like bench_jobs.py:
wall, CPU (user + system) and peak RSS of the child. The 10k -> 100k exponent is
log(t100k / t10k) / log(10) (1.0 = linear).

    python benchmarks/bench_submit.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_jobs import measured, size_setup

SBATCH = """#!/bin/sh
for a in "$@"; do [ "$a" = "--test-only" ] && {{ echo "sbatch: Job 1 to start at now" >&2; exit 0; }}; done
n=$(cat {count} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {count}
echo $((100000 + n))
"""


def write_tools(folder: Path) -> None:
    """sbatch/scontrol/scancel stand-ins; squeue/sacct answer from files `queue_from_state` writes."""
    tools = {
        "sbatch": SBATCH.format(count=folder / "sbatch.count"),
        "scontrol": '#!/bin/sh\nif [ "$1 $2" = "show config" ]; then echo "MaxArraySize            = 1001"; '
                    'echo "MaxJobCount             = 10000"; else exit 1; fi\n',
        "sacctmgr": "#!/bin/sh\nexit 1\n",
        "squeue": f"#!/bin/sh\ncat {folder}/squeue.json 2>/dev/null || echo '{{\"jobs\": []}}'\n",
        "sacct": f"#!/bin/sh\ncat {folder}/sacct.txt 2>/dev/null\n",
        "scancel": "#!/bin/sh\nexit 0\n",
    }
    for name, body in tools.items():
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)


def sbatch_calls(folder: Path) -> int:
    path = folder / "sbatch.count"
    return int(path.read_text()) if path.exists() else 0


def queue_from_state(folder: Path, state_path: Path, env: dict[str, str]) -> None:
    """squeue.json: every submission pending; sacct.txt: task 0 of infer_g0's first piece FAILED.

    Read through hpcffn's own load_state (in a child with the benchmark's PYTHONPATH), so what a
    run left unrecorded would show here too.
    """
    import subprocess

    code = ("import sys,json;from pathlib import Path;from hpcffn.jobs.state import load_state;"
            "s=load_state(Path(sys.argv[1]));"
            "print(json.dumps([[x.job,x.job_id,x.tasks and [x.tasks[0]-x.array_offset,x.tasks[-1]-x.array_offset]]"
            " for x in s.submissions]))")
    subs = json.loads(subprocess.run([sys.executable, "-c", code, str(state_path)], env=env, check=True,
                                     capture_output=True, text=True).stdout)
    records, sacct, failed = [], [], False
    for job, jid, span in subs:
        base = {"job_state": "PENDING", "state_reason": "Dependency", "exit_code": 0, "restart_cnt": 0,
                "standard_output": f"/w/logs/{job}.out", "name": job, "job_id": int(jid)}
        if span is None:
            records.append({**base, "array_job_id": 0, "array_task_id": None})
            continue
        lo, hi = span
        if job == "infer_g0" and not failed:
            failed = True
            sacct.append(f"{jid}_{lo}|FAILED|1:0|None")
            lo += 1
        records.append({**base, "array_job_id": int(jid), "array_task_id": None, "array_task_string": f"{lo}-{hi}"})
    (folder / "squeue.json").write_text(json.dumps({"jobs": records}))
    (folder / "sacct.txt").write_text("\n".join(sacct) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    hpcffn = [sys.executable, "-m", "hpcffn.cli"]
    results: dict[int, dict[str, tuple[float, float, int]]] = {}
    print(f"{'tiles':>7}  {'what':<16} {'wall':>9} {'cpu':>9} {'peak':>10} {'sbatch calls':>13}  state.json")
    with tempfile.TemporaryDirectory(prefix="hpcffn-bench-submit-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            folder, spec, env = size_setup(tmp, n)
            work = folder / "work"
            write_tools(folder)
            measured([*hpcffn, "plan", str(spec), "--force"], env)
            row: dict[str, tuple[float, float, int]] = {}
            for what, cmd in (("submit", ["submit", str(work)]), ("status", ["status", str(work)]),
                              ("submit --resume", ["submit", str(work), "--resume"]),
                              ("cancel", ["cancel", str(work)])):
                before = sbatch_calls(folder)
                w, c, r, out = measured([*hpcffn, *cmd], env)
                row[what] = (w, c, r)
                calls = sbatch_calls(folder) - before
                size = (work / "state.json").stat().st_size if (work / "state.json").exists() else 0
                print(f"{n:>7,}  {what:<16} {w:8.3f}s {c:8.3f}s {r / 2**20:7.1f} MB {calls:>13,}  "
                      f"{size / 2**20:6.1f} MB", flush=True)
                if what == "submit":
                    queue_from_state(folder, work / "state.json", env)
                if what == "submit --resume":
                    assert calls > 0, out[-2000:]
            results[n] = row
            shutil.rmtree(folder)
    if 10_000 in results and 100_000 in results:
        print()
        for what in results[100_000]:
            e_wall = math.log(results[100_000][what][0] / results[10_000][what][0]) / math.log(10)
            e_cpu = math.log(results[100_000][what][1] / results[10_000][what][1]) / math.log(10)
            print(f"{what:<16} scaling exponent 10k -> 100k tiles: {e_cpu:5.2f} (cpu), {e_wall:5.2f} (wall)   "
                  "1.0 = linear")


if __name__ == "__main__":
    main()
