"""What a job sees on its compute node, written instead of running the stage (`hpcffn check`).

`hpcffn check` submits every job script as it is on disk, with HPCFFN_CHECK=<job name> in its
environment; `hpcffn stage ...` then runs this probe instead of the stage: the same node type,
modules, set-up lines, container, binds and hpcffn as the real run, in seconds. The report
(WORKDIR/checks/<job>.json) names every problem found: packages the stage needs that do not
import, GPUs SLURM gave that TensorFlow cannot see, inputs that cannot be read from inside the
job, a workdir it cannot write, an hpcffn version other than the one that planned.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import socket
import time
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import STAGE, packages

CHECK_ENV = "HPCFFN_CHECK"
UNIT_FLAGS = ("--tile", "--group", "--volume", "--block")


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _versions(stage: str, resegment: bool, problems: list[str]) -> dict:
    out = {}
    for name in packages(stage, resegment):
        try:
            module = importlib.import_module(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError as exc:
            out[name] = None
            problems.append(f"{name} does not import ({exc}): install hpcffn[ffn] in this environment or use the container")
    return out


def _gpus(problems: list[str]) -> dict:
    from hpcffn.ffn.devices import gpu_report

    seen, given, problem = gpu_report()
    if problem:
        problems.append(problem)
    return {"assigned": given, "seen": seen}


def _inputs(plan: Plan, stage: str, unit: str | None, job: str | None = None) -> list:
    """The user's input files this job reads (sources outside the workdir): its unit's volume(s), or
    (a group, a block, the experiment) those with groundtruth."""
    job = job if job in {j.name for j in plan.jobs} else stage  # an index is a position in the job's units
    kind = STAGE[stage].unit if stage in STAGE else None
    if stage == "consensus":
        volumes = []  # reads the two passes in the workdir only
    elif kind == "volume" and unit is not None:
        volumes = [plan.volume(plan.task_unit(job, unit))]
    elif kind == "tile" and unit is not None:
        from hpcffn.core.bundles import is_bundle, members

        name = str(plan.task_unit(job, unit))  # a task of several tiles (tiles_per_task) reads all their volumes
        tiles = members(plan.tiles, name) if is_bundle(name) else [plan.tile(name)]
        volumes = [plan.volume(v) for v in dict.fromkeys(t.volume for t in tiles)]
    else:
        volumes = [v for v in plan.volumes if v.groundtruth]
    paths = []
    for v in volumes:
        for source in (v.raw_source, v.groundtruth_source, v.mask):
            if source and not Path(source.rpartition(":")[0] or source).resolve().is_relative_to(plan.layout.root.resolve()):
                paths.append(source)
    return paths


def _readable(source: str) -> str | None:
    """None when the input can be read here, else why not."""
    from hpcffn.io.volumes import HDF5_SUFFIXES, open_dataset, parse_location

    head = source.rpartition(":")[0]
    if source.lower().endswith(HDF5_SUFFIXES) or head.lower().endswith(HDF5_SUFFIXES):
        try:
            with open_dataset(parse_location(source, "raw")) as ds:
                if ds.size:
                    _ = ds[(0,) * ds.ndim]  # a real read, not only the header
        except HpcffnError as exc:
            return str(exc)
        return None
    path = Path(source)
    if not path.exists():
        return f"{path} does not exist here: bind its folder into the container (container.binds)"
    if path.is_dir():
        first = next((p for p in sorted(path.iterdir()) if p.is_file()), None)
        if first is None or not os.access(first, os.R_OK):
            return f"{path} holds no readable slice here"
    elif not os.access(path, os.R_OK):
        return f"{path} is not readable here"
    return None


def run_probe(job: str, stage: str, argv: list[str]) -> Path:
    """Write WORKDIR/checks/<job>.json for the stage command in `argv`; returns its path."""
    from hpcffn import __version__
    from hpcffn.core.atomic import atomic_write_text
    from hpcffn.core.plan_model import load_plan

    plan_arg = _flag(argv, "--plan")
    if plan_arg is None:
        raise HpcffnError(f"{CHECK_ENV} is set, but this stage command has no --plan: run checks on rendered scripts only")
    plan = load_plan(Path(plan_arg))
    unit = next((v for v in (_flag(argv, f) for f in UNIT_FLAGS) if v is not None), None)
    problems: list[str] = []
    report = {
        "job": job, "stage": stage, "unit": unit, "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hpcffn": __version__, "planned_with": plan.hpcffn_version, "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "packages": _versions(stage, plan.ffn.stitch.resegment, problems),
    }
    if plan.hpcffn_version != __version__:
        problems.append(f"hpcffn {__version__} runs here but {plan.hpcffn_version} planned: "
                        "rebuild the image or re-plan with the same version")
    if report["packages"].get("tensorflow"):  # a TensorFlow stage (core/stage_table.py), and it imports
        report["gpus"] = _gpus(problems)
    report["inputs"] = {}
    for source in _inputs(plan, stage, unit, job):
        why = _readable(source)
        report["inputs"][source] = why or "ok"
        if why:
            problems.append(why)
    checks = plan.layout.root / "checks"
    try:
        checks.mkdir(parents=True, exist_ok=True)
        probe = checks / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise HpcffnError(f"the workdir {plan.layout.root} is not writable from this job ({exc}): "
                          "bind it read-write, or choose a workdir on a shared filesystem") from None
    report["problems"] = problems
    out = checks / f"{job}.json"
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    return out
