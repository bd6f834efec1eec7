"""`hpcffn plan/init/validate` as a user runs them: exit codes, one-line errors, files written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.plan.spec import load_spec

REPO = Path(__file__).resolve().parent.parent


def hpcffn(*args, cwd=None):
    return subprocess.run(["hpcffn", *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcffn: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


def test_plan_writes_workdir_and_summary(tmp_path):
    spec = write_spec(tmp_path)
    proc = hpcffn("plan", spec)
    assert proc.returncode == 0, proc.stderr
    assert "2 GPU groups" in proc.stdout and "partitions" in proc.stdout
    assert (tmp_path / "work" / "plan.json").is_file()
    assert (tmp_path / "work" / "jobs" / "train" / "train_g1.sbatch").is_file()
    # re-plan after a hand edit and a spec change: edit kept, warning printed, .new written
    script = tmp_path / "work" / "jobs" / "evaluate" / "evaluate.sbatch"
    script.write_text(script.read_text() + "echo mine\n")
    write_spec(tmp_path, spec_dict(cluster={"profile": "local", "evaluate": {"time": "00:45:00"}}), data=False)
    proc = hpcffn("plan", spec)
    assert proc.returncode == 0 and "edited by hand" in proc.stdout
    assert script.read_text().endswith("echo mine\n") and script.with_name("evaluate.sbatch.new").is_file()
    proc = hpcffn("plan", spec, "--force")
    assert proc.returncode == 0 and "echo mine" not in script.read_text()


def test_plan_dry_run_writes_nothing(tmp_path):
    proc = hpcffn("plan", write_spec(tmp_path), "--dry-run")
    assert proc.returncode == 0 and "would write jobs/infer/infer_g0.sbatch" in proc.stdout
    assert not (tmp_path / "work").exists()


def test_plan_errors_are_one_line(tmp_path):
    spec = write_spec(tmp_path, spec_dict(subvolume={"size": [64, 64, 64], "bogus": 1}))
    assert_one_line_error(hpcffn("plan", spec), "exp.yaml", "subvolume.bogus", "unknown key")
    assert_one_line_error(hpcffn("plan", tmp_path / "missing.yaml"), "missing.yaml", "does not exist")


def test_validate_checks_and_writes_nothing(tmp_path):
    spec = write_spec(tmp_path)
    proc = hpcffn("validate", spec)
    assert proc.returncode == 0 and "ok" in proc.stdout and "4 tiles" in proc.stdout
    assert not (tmp_path / "work").exists()
    bad = write_spec(tmp_path, spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5:nope"}]), data=False, name="bad.yaml")
    assert_one_line_error(hpcffn("validate", bad), "bad.yaml", "volumes.0.raw", "raw, stack")


def test_init_writes_a_valid_starter_and_never_overwrites(tmp_path):
    target = tmp_path / "new.yaml"
    proc = hpcffn("init", target)
    assert proc.returncode == 0 and target.is_file()
    spec = load_spec(target)  # the starter is a valid spec (its data files are for the user to fill in)
    assert spec.name == "my-experiment" and spec.container.runtime == "apptainer"
    target.write_text("mine")
    assert_one_line_error(hpcffn("init", target), "already exists", "--force")
    assert target.read_text() == "mine"


@pytest.mark.slow
def test_examples_plan(tmp_path):
    """The ibex example plans without data (workdir moved into tmp) into 192 tiles and 6x32 groups."""
    text = (REPO / "examples" / "ibex-microglia.yaml").read_text()
    lines = [f"workdir: {tmp_path}/ibex" if line.startswith("workdir:") else line for line in text.splitlines()]
    spec = tmp_path / "ibex.yaml"
    spec.write_text("\n".join(lines) + "\n")
    proc = hpcffn("plan", spec)
    assert proc.returncode == 0, proc.stderr
    from hpcffn.core.plan_model import load_plan

    plan = load_plan(tmp_path / "ibex")
    assert len(plan.tiles) == 192 and [len(g.tiles) for g in plan.groups] == [32] * 6
    assert len([j for j in plan.jobs if j.stage == "train"]) == 6
    scripts = [str(plan.layout.root / j.script) for j in plan.jobs]
    proc = subprocess.run(["shellcheck", *scripts], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "--array=0-191%32" in (plan.layout.root / "jobs/partitions/partitions.sbatch").read_text()
    # the tiny example validates once its data exists (make_data.py), so only check its spec here
    tiny = load_spec(REPO / "examples" / "tiny" / "tiny.yaml")
    assert tiny.subvolume.groups == 2 and tiny.cluster.profile == "local"


def test_tiny_example_plans_from_its_data(tmp_path):
    import shutil
    import sys

    shutil.copy(REPO / "examples" / "tiny" / "tiny.yaml", tmp_path / "tiny.yaml")
    subprocess.run([sys.executable, str(REPO / "examples" / "tiny" / "make_data.py"), "--out", str(tmp_path / "data")],
                   check=True, capture_output=True)
    proc = hpcffn("plan", tmp_path / "tiny.yaml")
    assert proc.returncode == 0, proc.stderr
    from hpcffn.core.plan_model import load_plan

    plan = load_plan(tmp_path / "work")
    assert plan.volumes[0].shape == (64, 128, 128) and plan.volumes[0].needs_convert
    assert len(plan.tiles) == 4 and [len(g.tiles) for g in plan.groups] == [2, 2]
    assert plan.jobs[0].stage == "convert"
