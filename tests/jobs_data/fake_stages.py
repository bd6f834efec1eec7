#!/usr/bin/env python3
"""A stand-in for `hpcffn` in rendered scripts (container.command): every stage, no FFN.

Usage (as the scripts call it): fake_stages.py stage NAME --plan P [--job J] --tile|--group|--volume|--block X.
An array index is resolved the way the real stage commands do with --job (the job's unit
index, hpcffn/core/units.py), so a wrong HPCFFN_ARRAY_OFFSET shows as a wrong or missing unit.
It sleeps FAKE_SLEEP seconds, or FAKE_SLEEP_<STAGE>_<UNIT> (e.g. FAKE_SLEEP_train_g1=8), writes
the stage's output file and success marker where status looks for them, and appends one JSON
line per run to WORKDIR/fake_runs.jsonl: stage, job, unit, SLURM ids, start and end (epoch s).
"""

import json
import os
import sys
import time
from pathlib import Path

from hpcffn.core.layout import Layout
from hpcffn.core.units import read_unit

args = sys.argv[1:]
stage = args[1]


def flag(name):
    return args[args.index(name) + 1] if name in args else None


plan = Path(flag("--plan"))
layout = Layout(plan.parent)
job = flag("--job")
key = next(v for v in (flag("--tile"), flag("--group"), flag("--volume"), flag("--block"), "experiment") if v is not None)
if job and key.isdigit():
    unit = read_unit(plan, job, int(key))["name"]
elif key.isdigit():  # convert/stitch: an index into the stage's one job
    from hpcffn.core.plan_model import load_plan

    unit = str(load_plan(plan).task_unit(stage, key))
else:
    unit = key
start = time.time()
time.sleep(float(os.environ.get(f"FAKE_SLEEP_{stage}_{unit}", os.environ.get("FAKE_SLEEP", "0.2"))))
output = {"convert": lambda: layout.converted_volume(unit), "partitions": lambda: layout.partitions(unit),
          "coordinates": lambda: layout.coordinates(unit), "infer": lambda: layout.segmentation(unit),
          "joins": lambda: layout.joins(unit), "resolve": lambda: layout.relabelling(unit),
          "relabel": lambda: None, "pyramid": lambda: None,  # these write into the volume store: marker only
          "stitch": lambda: layout.stitched_hdf5(unit), "evaluate": lambda: layout.evaluation_report,
          # what status takes for a finished training: the checkpoint at max_steps
          "train": lambda: layout.train_dir(unit) / f"ckpt-{json.loads(plan.read_text())['ffn']['training']['max_steps']}.index",
          }[stage]()
if output is not None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("fake\n")
marker = layout.marker(stage, unit)
marker.parent.mkdir(parents=True, exist_ok=True)
# The marker certifies the unit as `hpcffn plan` fingerprinted it (plan/fingerprints.py).
from hpcffn.core.plan_model import load_plan as _load_plan
from hpcffn.core.units import task_fingerprint

marker.write_text(json.dumps({"fingerprint": task_fingerprint(_load_plan(plan), stage, unit)}) + "\n")
record = {"stage": stage, "job": job, "unit": unit, "key": key, "start": start, "end": time.time(),
          "slurm_job": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
          "slurm_task": os.environ.get("SLURM_ARRAY_TASK_ID")}
fd = os.open(layout.root / "fake_runs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (json.dumps(record) + "\n").encode())
os.close(fd)
print(f"fake {stage} {unit} done", flush=True)
