"""Job machinery at 10,000 / 100,000 / 512,000 tiles: plan, submit --dry-run, status, task start.

Each figure is a fresh `hpcffn` process (imports count, as for a user), timed with its peak
memory (the child's max RSS). `status` runs against stand-in squeue/sacct commands that answer
for every task of the plan the way SLURM's do (running tasks one by one, a pending array as one
record, finished tasks from sacct). Task start is what one array task of the infer job reads
to know its tile (`hpcffn.core.units.read_unit`), against the baseline of loading the whole
plan.json as tasks did before (same run). Targets at 100,000 tiles: plan < 10 s, submit
--dry-run < 5 s, status < 5 s, each < 1 GB; task start < 50 ms and < 50 MB at 512,000 tiles.
The 10k -> 100k scaling exponent is log(t100k / t10k) / log(10) (1.0 = linear; below 1 where the
fixed start-up, about a second of imports, still weighs at 10k), and 100k -> 512k likewise.
Wall and CPU time are both printed: on a shared login node wall time measures the neighbours.

    python benchmarks/bench_jobs.py [--sizes 10000,100000,512000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_plan import spec_copy

# 500^3 tiles: z x y x x tile counts for each size.
GRIDS = {10_000: (10, 20, 50), 100_000: (20, 50, 100), 512_000: (80, 80, 80)}
TARGETS = {"plan": 10.0, "submit --dry-run": 5.0, "status": 5.0}
GB = 1 << 30


def measured(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float, int, str]:
    """Wall time, CPU time (user + system) and peak RSS of the command, from a wrapper that waits for it."""
    wrapper = ("import os,sys,subprocess,time,json;t=time.perf_counter();p=subprocess.Popen(sys.argv[1:],"
               "stdout=subprocess.PIPE,stderr=subprocess.PIPE);o,e=p.communicate();w=time.perf_counter()-t;"
               "import resource;u=resource.getrusage(resource.RUSAGE_CHILDREN);r=u.ru_maxrss;c=u.ru_utime+u.ru_stime;"
               "sys.stderr.write(e.decode()[-3000:]);"
               "print(json.dumps({'wall':w,'cpu':c,'rss':r*1024,'rc':p.returncode,'out':o.decode()[-2000:]}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=cwd, capture_output=True, text=True,
                          check=False)  # the command's own exit code is in the record
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    if rec["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed (exit {rec['rc']}): {proc.stderr.strip()[-2000:]}")
    return rec["wall"], rec["cpu"], rec["rss"], rec["out"]


def size_setup(tmp: Path, n: int) -> tuple[Path, Path, dict[str, str]]:
    """(folder, spec, env) for `n` tiles: the ibex spec at 500^3 tiles, 50 groups, workdir
    folder/work; env runs this checkout's hpcffn with the folder's stand-ins first on PATH."""
    nz, ny, nx = GRIDS[n]
    folder = tmp / str(n)
    folder.mkdir()
    spec = spec_copy(folder, "spec.yaml", folder / "work", shape=(nz * 500, ny * 500, nx * 500), groups=50)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{folder}:{os.environ['PATH']}", "COLUMNS": "250"}
    return folder, spec, env


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
    """(seconds, peak bytes) of one infer task getting its tile (its plan id checked, its fingerprint
    read twice: at start and when marking done), and of loading the whole plan.

    Each in a fresh process; the time covers the reading only (imports are the same for both
    and do not grow with tiles), the memory is the process's peak (VmHWM), imports included.
    (Not ru_maxrss: Linux carries it across exec from the parent that started the process.)
    """
    code = ("import sys,time;import hpcffn.core.units as U;from hpcffn.core.units import load_task_plan;"
            "from hpcffn.core.plan_model import load_plan;t=time.perf_counter();"
            "p,u=load_task_plan(sys.argv[1], sys.argv[2], int(sys.argv[3])) if sys.argv[4]=='unit' else "
            "(lambda q: (q, q.task_unit(sys.argv[2], int(sys.argv[3]))))(load_plan(sys.argv[1]));"
            # a task also reads its fingerprint when it starts and again when it marks its unit done
            "f=[U.task_fingerprint(p,'infer',u) for _ in range(2)] if hasattr(U,'task_fingerprint') else None;"
            "w=time.perf_counter()-t;assert p.tile(u).name==u;"
            "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
            "print(w, int(hwm)*1024)")
    from hpcffn.core.plan_model import load_plan

    plan = load_plan(plan_path)
    job = next(j for j in plan.jobs if j.stage == "infer")
    index = str(len(job.units) - 1)
    del plan
    out = []
    for how in ("unit", "plan"):
        proc = subprocess.run([sys.executable, "-c", code, str(plan_path), job.name, index, how], env=env,
                              capture_output=True, text=True, check=True)
        w, rss = proc.stdout.split()
        out.append((float(w), int(rss)))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,512000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    hpcffn = [sys.executable, "-m", "hpcffn.cli"]
    results: dict[int, dict[str, tuple[float, float, int]]] = {}
    print(f"{'tiles':>7}  {'what':<34} {'wall':>9} {'cpu':>9} {'peak':>10}")
    with tempfile.TemporaryDirectory(prefix="hpcffn-bench-jobs-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            folder, spec, env = size_setup(tmp, n)
            work = folder / "work"
            row: dict[str, tuple[float, float, int]] = {}
            row["plan"] = measured([*hpcffn, "plan", str(spec), "--force"], env)[:3]
            row["re-plan, same spec"] = measured([*hpcffn, "plan", str(spec)], env)[:3]
            write_stubs(folder, work / "plan.json", work / "state.json.dry")
            row["submit --dry-run"] = measured([*hpcffn, "submit", str(work), "--dry-run"], env)[:3]
            os.replace(work / "state.json.dry", work / "state.json")  # status: every task submitted
            wall, cpu, rss, out = measured([*hpcffn, "status", str(work)], env)
            assert "evaluate" in out and "RUNNING" in out, out[-3000:]  # out: the tail of the status table
            row["status"] = (wall, cpu, rss)
            (w, r), (bw, br) = task_start(work / "plan.json", env)
            row["task start (one tile)"], row["task start baseline (whole plan)"] = (w, w, r), (bw, bw, br)
            results[n] = row
            for what, (w, c, r) in row.items():
                print(f"{n:>7,}  {what:<34} {w:8.3f}s {c:8.3f}s {r / 2**20:7.1f} MB", flush=True)
            shutil.rmtree(folder)
    print()
    for what, target in TARGETS.items():
        if 100_000 in results:
            w, c, r = results[100_000][what]
            verdict = "PASS" if w < target and r < GB else ("PASS on CPU time (wall: shared machine)"
                                                          if c < target and r < GB else "FAIL")
            print(f"{what:<17} at 100,000 tiles: wall {w:6.2f} s, cpu {c:6.2f} s, {r / 2**20:6.1f} MB"
                  f"   target < {target:.0f} s, < 1 GB   {verdict}")
        if 10_000 in results and 100_000 in results:
            e_wall = math.log(results[100_000][what][0] / results[10_000][what][0]) / math.log(10)
            e_cpu = math.log(results[100_000][what][1] / results[10_000][what][1]) / math.log(10)
            print(f"{what:<17} scaling exponent 10k -> 100k tiles: {e_cpu:5.2f} (cpu), {e_wall:5.2f} (wall)   1.0 = linear")
        if 100_000 in results and 512_000 in results:  # start-up (imports) no longer dominates
            e_cpu = math.log(results[512_000][what][1] / results[100_000][what][1]) / math.log(5.12)
            print(f"{what:<17} scaling exponent 100k -> 512k tiles: {e_cpu:5.2f} (cpu)")
    big = max(results)
    w, _, r = results[big]["task start (one tile)"]
    bw, _, br = results[big]["task start baseline (whole plan)"]
    ok = w < 0.05 and r < 50 * 2**20
    print(f"task start at {big:,} tiles: {w * 1000:6.1f} ms, {r / 2**20:5.1f} MB peak   target < 50 ms, < 50 MB   "
          f"{'PASS' if ok else 'FAIL'}")
    print(f"ratio whole-plan load / task start at {big:,} tiles: {bw / w:8.1f} x time, {br / r:5.1f} x memory")


if __name__ == "__main__":
    main()
