"""How fast `hpcffn plan` is, against rendering one script per tile (the by-hand way), same run.

Plans (1) the ibex example (192 tiles, 6 groups) and (2) a 10,000-tile spec
(5000 x 10000 x 25000 at 500^3: 10 x 20 x 50 tiles, 50 groups), each as a fresh `hpcffn plan`
process, so imports count as they do for a user. The baseline renders and writes one batch
script per tile with the same Jinja templates, which is what a per-tile script layout costs.
Acceptance: ibex < 2 s, 10,000 tiles < 10 s.

    python benchmarks/bench_plan.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IBEX = REPO / "examples" / "ibex-microglia.yaml"


def spec_copy(folder: Path, name: str, workdir: Path, shape=None, groups=None) -> Path:
    """The ibex example with the workdir moved (and optionally a bigger shape / more groups)."""
    out = []
    for line in IBEX.read_text().splitlines():
        key = line.strip().split(":")[0]
        if line.startswith("workdir:"):
            line = f"workdir: {workdir}"
        elif key == "shape" and shape:
            line = f"    shape: [{', '.join(map(str, shape))}]"
        elif key == "groups" and groups:
            line = f"  groups: {groups}"
        out.append(line)
    path = folder / name
    path.write_text("\n".join(out) + "\n")
    return path


def time_cli(spec: Path, repeat: int) -> float:
    """Best wall time of a fresh `hpcffn plan SPEC --force` process."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpcffn.cli", "plan", str(spec), "--force"], check=True,
                       capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def time_per_tile_scripts(spec: Path, out: Path, repeat: int) -> tuple[float, int]:
    """Baseline: render + write one infer script per tile (what array jobs avoid)."""
    from hpcffn.core.atomic import atomic_write_text
    from hpcffn.core.plan_model import JobPlan
    from hpcffn.plan.planner import make_plan

    planned = make_plan(spec)
    tiles = planned.plan.tiles
    best = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        jobs = [JobPlan(name=f"infer_{t.name}", stage="infer", script=f"{t.name}.sbatch", sha256="", array=False,
                        units=[t.name]) for t in tiles]
        for rel, text in planned.render_jobs(jobs).items():
            atomic_write_text(out / rel, text, mode=0o755)
        best = min(best, time.perf_counter() - t0)
    return best, len(tiles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcffn-bench-") as tmp:
        tmp = Path(tmp)
        ibex = spec_copy(tmp, "ibex.yaml", tmp / "ibex")
        big = spec_copy(tmp, "big.yaml", tmp / "big", shape=(5000, 10000, 25000), groups=50)
        t_ibex = time_cli(ibex, args.repeat)
        t_big = time_cli(big, args.repeat)
        t_base, n_tiles = time_per_tile_scripts(big, tmp / "per-tile", max(1, args.repeat - 2))
        scripts = len(list((tmp / "big" / "jobs").rglob("*.sbatch")))
    print(f"ibex example plan (192 tiles, fresh process):   {t_ibex:7.3f} s   target < 2 s   "
          f"{'PASS' if t_ibex < 2 else 'FAIL'}")
    print(f"10,000-tile plan ({scripts} scripts, fresh process): {t_big:7.3f} s   target < 10 s  "
          f"{'PASS' if t_big < 10 else 'FAIL'}")
    print(f"baseline: one script per tile ({n_tiles} scripts):  {t_base:7.3f} s")
    print(f"ratio baseline / hpcffn plan (10,000 tiles):      {t_base / t_big:7.1f} x")


if __name__ == "__main__":
    main()
