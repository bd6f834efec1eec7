"""Stage 3: train one FFN model per GPU group from its coordinate records.

`train_model` is the standalone entry (explicit files); `run_from_plan` resolves a group's
coordinate file, volumes and train dir from plan.json and writes the success marker.
Returns the process exit code: 0 done, layout.EXIT_REQUEUE after a signal-triggered checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ModelParams, TrainingParams
from hpcffn.core.plan_model import Plan


def train_model(coordinates: list[str | Path], volumes: list, model_params: ModelParams,
                train_params: TrainingParams, train_dir: str | Path, log=print) -> int:
    """Train (or continue training) into `train_dir`; `volumes` are examples.TrainingVolume.

    Holds the train dir's own lock (`.hpcffn.lock`), so a standalone run never trains into a
    dir another run (standalone or from a plan) is training into.
    """
    from hpcffn.core.locks import exclusive
    from hpcffn.core.pretrained import check_fits
    from hpcffn.ffn.training import train

    check_fits(train_params.init_checkpoint, model_params)
    with exclusive(Path(train_dir) / ".hpcffn.lock", f"train dir {train_dir}",
                   "wait for that training to end (or stop it), or give another --train-dir"):
        result = train([str(c) for c in coordinates], volumes, model_params, train_params, train_dir, log=log)
    return result.exit_code


def plan_volumes(plan: Plan) -> list:
    """Every planned volume with groundtruth, as training volumes named as in the coordinates."""
    from hpcffn.ffn.examples import TrainingVolume
    from hpcffn.io.volumes import parse_location

    out = []
    for v in plan.volumes:
        if v.groundtruth:
            out.append(TrainingVolume(v.name, parse_location(v.raw, "raw"), parse_location(v.groundtruth, "stack")))
    return out


def run_from_plan(plan: Plan, group: str, model_params: ModelParams | None = None,
                  train_params: TrainingParams | None = None, log=print) -> int:
    """Train group `group` (name or index) as planned; marker written when max_steps is reached."""
    from hpcffn.stages.markers import hold_unit, mark_done

    g = plan.group(group)
    coords = plan.layout.coordinates(g.name)
    if not coords.is_file():
        raise HpcffnError(
            f"coordinates of group {g.name} not found at {coords}: run `hpcffn stage coordinates --plan "
            f"{plan.layout.plan} --group {g.name}` first"
        )
    volumes = plan_volumes(plan)
    if not volumes:
        raise HpcffnError(f"the plan of {plan.spec_file} has no volume with groundtruth: training needs labels")
    mp = model_params or plan.ffn.model
    tp = train_params or plan.ffn.training
    with hold_unit(plan, "train", g.name):
        code = train_model([coords], volumes, mp, tp, plan.layout.train_dir(g.name), log=log)
        if code == 0:
            mark_done(plan, "train", g.name, max_steps=tp.max_steps)
    return code
