"""The stage table (hpcffn/core/stage_table.py) agrees with what is written elsewhere per stage:
templates, `hpcffn stage` commands, the spec's per-stage resources."""

from __future__ import annotations

from hpcffn.cli import stage_app
from hpcffn.core.stage_table import (
    CONSENSUS_STEPS,
    INFERENCE_PASSES,
    PASS_STAGE,
    SPEC_STAGES,
    STAGE,
    STAGES,
    STITCH_STEPS,
    TABLE,
    expand_stages,
    packages,
    runs_tensorflow,
)
from hpcffn.plan.resources import templates_dir
from hpcffn.plan.spec import ClusterSpec, ProfileSpec


def test_every_job_stage_has_a_template():
    assert all((templates_dir() / f"{s}.sbatch.j2").is_file() for s in STAGES)


def test_every_stage_command_is_in_the_table():
    # `check` probes a command's packages and the CLI catches the time-limit signal by this name.
    assert {c.name for c in stage_app.registered_commands} <= set(STAGE)


def test_every_spec_stage_has_its_own_resources():
    for model in (ClusterSpec, ProfileSpec):
        assert set(SPEC_STAGES) <= set(model.model_fields)
    assert {s.resource_stage for s in TABLE} <= set(SPEC_STAGES)


def test_stages_wait_only_for_earlier_job_stages():
    for i, s in enumerate(STAGES):
        assert set(STAGE[s].after) <= set(STAGES[:i]), s


def test_steps_and_their_expansion():
    assert STITCH_STEPS == ("joins", "resolve", "relabel", "pyramid")
    assert CONSENSUS_STEPS == ("reverse", "consensus")
    assert expand_stages(["stitch", "infer", "convert"]) == [*STITCH_STEPS, "infer", *CONSENSUS_STEPS, "convert"]
    assert "stitch" in SPEC_STAGES and "stitch" not in STAGES  # runs as its steps


def test_inference_passes_and_their_pass_names():
    """The forward pass first (plan_jobs plans it alone without consensus); the template's --pass names it."""
    assert INFERENCE_PASSES == ("infer", "reverse") and dict(PASS_STAGE) == {"forward": "infer", "reverse": "reverse"}
    for name, stage in PASS_STAGE.items():
        script = (templates_dir() / f"{stage}.sbatch.j2").read_text()
        assert (f"--pass {name}" in script) == (name != "forward")  # forward is --pass's default


def test_base_packages_are_base_dependencies():
    import tomllib
    from pathlib import Path

    from hpcffn.core.stage_table import BASE_PACKAGES

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(any(d.startswith(p) for d in deps) for p in BASE_PACKAGES)


def test_the_starter_spec_lists_the_spec_stages():
    from hpcffn.plan.starter import STARTER

    assert f"# stages: [{', '.join(SPEC_STAGES)}]" in STARTER


def test_joins_run_tensorflow_only_with_resegment():
    """ffn.stitch.resegment (default on) fills with the checkpoint; off, joins need no TensorFlow:
    neither its script's TensorFlow lines nor `check`'s probe for it."""
    assert runs_tensorflow("joins", True) and not runs_tensorflow("joins", False)
    assert "tensorflow" in packages("joins") and "tensorflow" not in packages("joins", resegment=False)
    assert runs_tensorflow("infer", False) and packages("infer", resegment=False) == STAGE["infer"].packages
    assert not any(runs_tensorflow(s, True) for s in ("resolve", "relabel", "pyramid", "consensus"))
