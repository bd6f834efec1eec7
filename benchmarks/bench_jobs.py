"""Job machinery at 10,000 / 100,000 / 512,000 tiles: plan, submit --dry-run, status, task start.

Each figure is a fresh `hpcffn` process (imports count, as for a user), timed with its peak
memory (the child's max RSS). `status` runs against stand-in squeue/sacct commands that answer
for every task of the plan the way SLURM's do (running tasks one by one, a pending array as one
record, finished tasks from sacct). Task start is what one array task of the infer job reads
to know its tile (`hpcffn.core.units.read_unit`), against the baseline of loading the whole
plan.json as tasks did before (same run). Targets at 100,000 tiles: plan < 10 s, submit
--dry-run < 5 s, status < 5 s, each < 1 GB; task start < 50 ms and < 50 MB at 512,000 tiles.
The 10k -> 100k scaling exponent is log(t100k / t10k) / log(10) (1.0 = linear).

    python benchmarks/bench_jobs.py [--sizes 10000,100000,512000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_plan import spec_copy  # noqa: E402

# 500^3 tiles: z x y x x tile counts for each size.
GRIDS = {10_000: (10, 20, 50), 100_000: (20, 50, 100), 512_000: (80, 80, 80)}
TARGETS = {"plan": 10.0, "submit --dry-run": 5.0, "status": 5.0}
GB = 1 << 30


def measured(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int, str]:
    """Wall time and peak RSS from a wrapper that waits for the command itself (wait4)."""
    wrapper = ("import os,sys,subprocess,time,json;t=time.perf_counter();p=subprocess.Popen(sys.argv[1:],"
               "stdout=subprocess.PIPE,stderr=subprocess.PIPE);o,e=p.communicate();w=time.perf_counter()-t;"
               "import resource;r=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
               "sys.stderr.write(e.decode()[-3000:]);"
               "print(json.dumps({'wall':w,'rss':r*1024,'rc':p.returncode,'out':o.decode()[-200000:]}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    if rec["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed (exit {rec['rc']}): {proc.stderr.strip()[-2000:]}")
    return rec["wall"], rec["rss"], rec["out"]


def write_stubs(folder: Path, plan_path: Path, state_path: Path) -> None:
    """squeue/sacct/scontrol stand-ins answering for every task in state.json, and that state.

    One submission per job (ids 1000, 1001, ...); in each array, the first 500 tasks are
    running (one squeue record each), the next ones pending as one array record, and every
    task of the first job is finished (sacct only), as after a day of work.
    """
    from hpcffn.core.plan_model import load_plan
    from hpcffn.jobs.state import State, Submission, save_state

    plan = load_plan(plan_path)
    state = State()
    records, sacct = [], []
    for n, job in enumerate(plan.jobs):
        jid = str(1000 + n)
        tasks = list(range(len(job.units))) if job.array else None
        state.submissions.append(Submission(job=job.name, job_id=jid, submitted="2026-01-01T00:00:00+0000",
                                            sha256=job.sha256, tasks=tasks, command=["sbatch", job.script],
                                            units={str(i): u for i, u in enumerate(job.units)}))
        if n == 0:
            sacct += [f"{jid}_{t}|COMPLETED|0:0|None" if tasks else f"{jid}|COMPLETED|0:0|None" for t in tasks or [0]]
            continue
        base = {"job_state": "RUNNING", "state_reason": "None", "exit_code": 0, "restart_cnt": 0,
                "standard_output": f"/w/logs/{job.name}.out", "name": job.name}
        if tasks is None:
            records.append({**base, "job_id": int(jid), "array_job_id": 0, "array_task_id": None})
            continue
        for t in tasks[:500]:
            records.append({**base, "job_id": int(jid) * 1000 + t, "array_job_id": int(jid), "array_task_id": t,
                            "array_task_string": ""})
        if len(tasks) > 500:
            records.append({**base, "job_state": "PENDING", "state_reason": "Dependency", "job_id": int(jid),
                            "array_job_id": int(jid), "array_task_id": None,
                            "array_task_string": f"500-{len(tasks) - 1}"})
    save_state(state_path, state)
    (folder / "squeue.json").write_text(json.dumps({"jobs": records}))
    (folder / "sacct.txt").write_text("\n".join(sacct) + "\n")
    stubs = {
        "squeue": f'cat {folder}/squeue.json\n',
        "sacct": f'cat {folder}/sacct.txt\n',
        "scontrol": 'if [ "$1 $2" = "show config" ]; then echo "MaxArraySize            = 1001"; '
                    'echo "MaxJobCount             = 10000"; else exit 1; fi\n',
        "sacctmgr": 'exit 1\n',
    }
    for name, body in stubs.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)


def task_start(plan_path: Path, env: dict[str, str]) -> tuple[tuple[float, int], tuple[float, int]]:
    """(seconds, peak bytes) of reading one infer task's unit, and of loading the whole plan."""
    code_unit = ("import sys,time,resource;t=time.perf_counter();from hpcffn.core.units import read_unit;"
                 "u=read_unit(sys.argv[1], sys.argv[2], int(sys.argv[3]));w=time.perf_counter()-t;"
                 "print(w, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024)")
    code_plan = ("import sys,time,resource;t=time.perf_counter();from hpcffn.core.plan_model import load_plan;"
                 "p=load_plan(sys.argv[1]);x=p.task_unit(sys.argv[2], int(sys.argv[3]));w=time.perf_counter()-t;"
                 "print(w, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024)")
    from hpcffn.core.plan_model import load_plan

    plan = load_plan(plan_path)
    job = next(j for j in plan.jobs if j.stage == "infer")
    index = str(len(job.units) - 1)
    out = []
    for code in (code_unit, code_plan):
        proc = subprocess.run([sys.executable, "-c", code, str(plan_path), job.name, index], env=env,
                              capture_output=True, text=True, check=True)
        w, rss = proc.stdout.split()
        out.append((float(w), int(rss)))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,512000")
    ap.add_argument("--no-baseline", action="store_true", help="skip the whole-plan load baseline of task start")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    hpcffn = [sys.executable, "-m", "hpcffn.cli"]
    results: dict[int, dict[str, tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="hpcffn-bench-jobs-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            nz, ny, nx = GRIDS[n]
            folder = tmp / str(n)
            folder.mkdir()
            spec = spec_copy(folder, "spec.yaml", folder / "work", shape=(nz * 500, ny * 500, nx * 500), groups=50)
            env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{folder}:{os.environ['PATH']}"}
            row: dict[str, tuple[float, int]] = {}
            wall, rss, _ = measured([*hpcffn, "plan", str(spec), "--force"], env)
            row["plan"] = (wall, rss)
            write_stubs(folder, folder / "work" / "plan.json", folder / "work" / "state.json.dry")
            wall, rss, _ = measured([*hpcffn, "submit", str(folder / "work"), "--dry-run"], env)
            row["submit --dry-run"] = (wall, rss)
            os.replace(folder / "work" / "state.json.dry", folder / "work" / "state.json")
            wall, rss, out = measured([*hpcffn, "status", str(folder / "work"), "--json"], env)
            rows = json.loads(out[out.index("{"):])["rows"] if len(out) < 200000 else None
            row["status"] = (wall, rss)
            row["task start"], row["task start (baseline: whole plan)"] = task_start(folder / "work" / "plan.json", env)
            results[n] = row
            for what, (w, r) in row.items():
                print(f"{n:>7,} tiles  {what:<36} {w:8.3f} s  {r / 2**20:8.1f} MB", flush=True)
            if rows is not None:
                assert sum(r["tasks"] for r in rows) > n, "status did not report every task"
    print()
    for what, target in TARGETS.items():
        if 100_000 in results:
            w, r = results[100_000][what]
            ok = w < target and r < GB
            print(f"{what:<18} at 100,000 tiles: {w:7.3f} s, {r / 2**20:7.1f} MB   target < {target:.0f} s, < 1 GB   "
                  f"{'PASS' if ok else 'FAIL'}")
        if 10_000 in results and 100_000 in results:
            e = math.log(results[100_000][what][0] / results[10_000][what][0]) / math.log(10)
            print(f"{what:<18} scaling exponent 10k -> 100k tiles: {e:5.2f}   (1.0 = linear)")
    big = max(results)
    (w, r), (bw, br) = results[big]["task start"], results[big]["task start (baseline: whole plan)"]
    ok = w < 0.05 and r < 50 * 2**20
    print(f"task start at {big:,} tiles: {w * 1000:6.1f} ms, {r / 2**20:5.1f} MB   target < 50 ms, < 50 MB   "
          f"{'PASS' if ok else 'FAIL'}")
    print(f"ratio whole-plan load / task start at {big:,} tiles: {bw / w:7.1f} x time, {br / r:5.1f} x memory")


if __name__ == "__main__":
    main()
