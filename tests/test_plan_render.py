"""Rendered scripts: shell-clean, no planning-machine paths, quoting, overrides, edit safety."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import load_plan
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import sha256, write_workdir
from hpcffn.plan.resources import templates_dir

REPO = Path(__file__).resolve().parent.parent


def do_plan(spec_path, force=False, dry_run=False, templates=None):
    planned = make_plan(spec_path, templates)
    report = write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=force, dry_run=dry_run)
    return planned, report


def apptainer_spec(tmp_path) -> Path:
    """Spec in one folder, inputs in another, workdir in a third, apptainer with the ibex profile."""
    from plan_helpers import write_h5

    write_h5(tmp_path / "inputs" / "v1.h5")
    spec = spec_dict(
        workdir=str(tmp_path / "wd"),
        volumes=[{"name": "v1", "raw": str(tmp_path / "inputs" / "v1.h5"), "groundtruth": str(tmp_path / "inputs" / "v1.h5"),
                  "polarity": "white"}],
        cluster={"profile": "ibex", "defaults": {"account": "k1234", "mail_user": "me@example.org", "mail_type": "END,FAIL"},
                 "train": {"modules": ["cuda/11.8"], "setup": ["echo preparing"], "extra_sbatch": ["--exclusive"]}},
        container={"runtime": "apptainer", "image": "/shared/images/hpcffn.sif", "binds": ["/scratch/ref:/ref:ro"]},
        subvolume={"size": [64, 64, 64], "overlap": [8, 8, 8], "groups": 2, "array_throttle": 3},
    )
    return write_spec(tmp_path / "specs", spec, data=False)


def test_all_scripts_pass_bash_n_and_shellcheck(tmp_path):
    scripts = []
    for spec_path in (write_spec(tmp_path / "a"), apptainer_spec(tmp_path / "b")):
        planned, _ = do_plan(spec_path)
        scripts += [planned.plan.layout.root / rel for rel in planned.scripts]
    assert len(scripts) == 13 + 14  # one infer array per group; stitch: joins, resolve, relabel, pyramid_s1..2; the apptainer spec also converts
    joins = next(text for rel, text in planned.scripts.items() if "joins" in rel)
    assert "ffn.stitch.resegment is on" in joins and "HPCFFN_TF_LOGS" in joins  # default: its fills run TensorFlow
    consensus = spec_dict(ffn={"coordinates": {"margin": [6, 6, 6]}, "model": {"depth": 2, "fov_size": [9, 9, 9], "deltas": [2, 2, 2]},
                               "inference": {"consensus": {"split_min_size": 10}}, "stitch": {"resegment": False}})
    planned, _ = do_plan(write_spec(tmp_path / "c", consensus))
    names = [rel for rel in planned.scripts if "reverse" in rel or "consensus" in rel or "joins" in rel]
    assert any("reverse" in n for n in names) and any("consensus" in n for n in names)  # its own templates
    joins = next(text for rel, text in planned.scripts.items() if "joins" in rel)
    assert "ffn.stitch.resegment" not in joins and "HPCFFN_TF_LOGS" not in joins  # resegment off: no TensorFlow
    scripts += [planned.plan.layout.root / rel for rel in names]
    for path in scripts:
        subprocess.run(["bash", "-n", str(path)], check=True)
    proc = subprocess.run(["shellcheck", "--shell=bash", *map(str, scripts)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_no_absolute_paths_of_the_planning_machine(tmp_path):
    spec_path = apptainer_spec(tmp_path)
    planned, _ = do_plan(spec_path)
    allowed = (str(tmp_path / "wd"), str(tmp_path / "inputs"), "/shared/images/hpcffn.sif", "/scratch/ref", "/ref")
    forbidden = [str(spec_path.parent), str(templates_dir()), sys.prefix, str(REPO), str(Path.home())]
    for rel, text in planned.scripts.items():
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#!"))
        for path in re.findall(r"(?<![\w$}>])/[A-Za-z0-9_][A-Za-z0-9_.\-/]*", body):
            assert path.startswith(allowed), f"{rel}: {path}"
        for bad in forbidden:
            assert bad not in body.replace(str(tmp_path / "wd"), "").replace(str(tmp_path / "inputs"), ""), f"{rel}: {bad}"


def test_sbatch_header_from_profile_and_overrides(tmp_path):
    planned, _ = do_plan(apptainer_spec(tmp_path))
    wd = tmp_path / "wd"
    train = planned.scripts["jobs/train/train_g1.sbatch"]
    header = [line for line in train.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=exp-train_g1",
        f"#SBATCH --output={wd}/logs/train/%x_%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --partition=batch",
        "#SBATCH --account=k1234",
        "#SBATCH --constraint=[v100]",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=128G",
        "#SBATCH --time=5-00:00:00",
        "#SBATCH --mail-user=me@example.org",
        "#SBATCH --mail-type=END,FAIL",
        "#SBATCH --signal=B:USR1@900",
        "#SBATCH --requeue",
        "#SBATCH --exclusive",
    ]
    # every #SBATCH line comes before the first command
    lines = train.splitlines()
    last_sbatch = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    first_cmd = min(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert last_sbatch < first_cmd
    assert 'HPCFFN=(apptainer exec --nv --bind "$BINDS" "$IMAGE" hpcffn)' in train
    assert f"BINDS=/scratch/ref:/ref:ro,{tmp_path}/inputs:{tmp_path}/inputs:ro,{wd}" in train
    assert "module load cuda/11.8" in train and "\necho preparing\n" in train
    parts = planned.scripts["jobs/partitions/partitions.sbatch"]
    assert "#SBATCH --array=0-3%3" in parts and "%x_%A_%a.out" in parts
    assert "--gres" not in parts and "--nv" not in parts and "--signal" not in parts  # CPU stage
    assert '"${HPCFFN[@]}" stage partitions --plan "$PLAN" --job partitions --tile "$TASK"' in parts
    assert '"${HPCFFN[@]}" stage evaluate --plan "$PLAN"\n' in planned.scripts["jobs/evaluate/evaluate.sbatch"]


def test_plan_json_jobs_units_and_dependencies(tmp_path):
    do_plan(write_spec(tmp_path))
    plan = load_plan(tmp_path / "work")
    assert [(j.name, j.array, [d.job for d in j.depends_on]) for j in plan.jobs] == [
        ("partitions", True, []),
        ("coordinates_g0", False, ["partitions"]),
        ("coordinates_g1", False, ["partitions"]),
        ("train_g0", False, ["coordinates_g0"]),
        ("train_g1", False, ["coordinates_g1"]),
        ("infer_g0", True, ["train_g0"]),  # each group's tiles wait only for their own model
        ("infer_g1", True, ["train_g1"]),
        ("joins", True, ["infer_g0", "infer_g1"]),
        ("resolve", True, ["joins"]),
        ("relabel", True, ["resolve"]),
        ("pyramid_s1", True, ["relabel"]),
        ("pyramid_s2", True, ["pyramid_s1"]),
        ("evaluate", False, ["relabel"]),
    ]
    for job in plan.jobs:
        assert job.sha256 == sha256((plan.layout.root / job.script).read_text())
        assert (plan.layout.root / job.script).stat().st_mode & 0o111
    for g in plan.groups:
        infer = plan.job(f"infer_{g.name}")
        assert infer.units == [t.name for t in plan.tiles if t.group == g.name] and infer.group == g.name
        assert f"--job infer_{g.name} --tile" in (plan.layout.root / infer.script).read_text()
    assert sorted(plan.job("infer_g0").units + plan.job("infer_g1").units) == sorted(t.name for t in plan.tiles)
    assert plan.job("train_g1").units == ["g1"] and plan.job("train_g1").group == "g1"
    assert plan.job("evaluate").units == ["experiment"]
    assert plan.job("resolve").units == [v.name for v in plan.volumes]
    assert plan.job("joins").units == plan.job("relabel").units == [t.name for t in plan.tiles]
    assert plan.job("pyramid_s1").units == ["v1_s1_b0", "v1_s1_b1"]  # level 1 is 50 x 65 x 35: two 64-voxel blocks in y
    for stage in ("convert", "partitions", "train", "infer", "joins", "resolve", "relabel", "pyramid", "evaluate"):
        assert (tmp_path / "work" / "logs" / stage).is_dir()
    assert (tmp_path / "work" / "spec.resolved.yaml").is_file()
    assert plan.spec.subvolume.min_edge == (21, 21, 21)


def test_array_index_matches_plan_order(tmp_path):
    """Training tiles come first, so partitions' task i is plan.tiles[i]; converted volumes first."""
    from plan_helpers import write_h5, write_tif_dir

    write_h5(tmp_path / "data" / "a.h5", shape=(64, 64, 128), datasets=("raw",))
    write_tif_dir(tmp_path / "b_raw", shape=(64, 64, 64))
    write_h5(tmp_path / "data" / "b_gt.h5", shape=(64, 64, 64), datasets=("stack",))
    spec = spec_dict(volumes=[{"name": "a", "raw": "data/a.h5"},
                              {"name": "b", "raw": "b_raw", "groundtruth": "data/b_gt.h5"}],
                     subvolume={"size": [64, 64, 64], "groups": 1})
    spec["ffn"]["inference"] = {"checkpoint": "ckpt"}
    plan = make_plan(write_spec(tmp_path, spec, data=False)).plan
    assert [v.name for v in plan.volumes] == ["b", "a"]
    assert [t.name for t in plan.tiles] == ["b_z0_y0_x0", "a_z0_y0_x0", "a_z0_y0_x1"]
    parts, convert = plan.job("partitions"), plan.job("convert")
    assert all(plan.tile(i).name == u for i, u in enumerate(parts.units))
    assert all(plan.volume(i).name == u for i, u in enumerate(convert.units))
    assert [d.job for d in plan.job("infer_g0").depends_on] == ["train_g0", "convert"]
    # Tiles of volumes without groundtruth: their own array, segmented with the first group's model.
    assert plan.job("infer_g0").units == ["b_z0_y0_x0"]
    assert plan.job("infer_ungrouped").units == ["a_z0_y0_x0", "a_z0_y0_x1"]
    assert [d.job for d in plan.job("infer_ungrouped").depends_on] == ["train_g0", "convert"]
    assert plan.tile("a_z0_y0_x1").group is None


def test_stage_subset_drops_dependencies(tmp_path):
    spec = spec_dict(stages=["train", "infer"])
    plan = make_plan(write_spec(tmp_path, spec)).plan
    assert [(j.name, [d.job for d in j.depends_on]) for j in plan.jobs] == [
        ("train_g0", []), ("train_g1", []), ("infer_g0", ["train_g0"]), ("infer_g1", ["train_g1"])]


def test_hand_edit_kept_and_new_written_then_force(tmp_path):
    spec_path = write_spec(tmp_path)
    do_plan(spec_path)
    script = tmp_path / "work" / "jobs" / "train" / "train_g0.sbatch"
    edited = script.read_text().replace("set -euo pipefail\n", "set -euo pipefail\nexport MY_FLAG=1\n")
    assert "MY_FLAG" in edited
    script.write_text(edited)
    # change the spec so the render differs as well
    spec = spec_dict(cluster={"profile": "local", "train": {"time": "00:45:00"}})
    write_spec(tmp_path, spec, data=False)
    planned, report = do_plan(spec_path)
    assert report.kept_edited == ["jobs/train/train_g0.sbatch"]
    assert script.read_text() == edited
    new = script.with_name("train_g0.sbatch.new")
    assert new.read_text() == planned.scripts["jobs/train/train_g0.sbatch"] and "00:45:00" in new.read_text()
    other = tmp_path / "work" / "jobs" / "train" / "train_g1.sbatch"  # not edited: updated silently
    assert "00:45:00" in other.read_text() and not other.with_name("train_g1.sbatch.new").exists()
    # a second re-plan still keeps the edit (the recorded hash is the render's, not the edit's);
    # its render is the one already waiting in .new, so nothing new is written
    new.write_text(new.read_text() + "# my merge notes\n")
    _, report = do_plan(spec_path)
    assert report.kept_edited == [] and script.read_text() == edited and new.read_text().endswith("notes\n")
    _, report = do_plan(spec_path, force=True)
    assert report.overwritten_edited == ["jobs/train/train_g0.sbatch"]
    assert "MY_FLAG" not in script.read_text() and not new.exists()


def test_replan_after_a_hand_edit_writes_no_new_when_the_render_is_the_one_edited(tmp_path):
    spec_path = write_spec(tmp_path)
    do_plan(spec_path)
    script = tmp_path / "work" / "jobs" / "train" / "train_g0.sbatch"
    edited = script.read_text().replace("set -euo pipefail\n", "set -euo pipefail\nexport MY_FLAG=1\n")
    script.write_text(edited)
    _, report = do_plan(spec_path)
    assert report.kept_edited == [] and "jobs/train/train_g0.sbatch" in report.unchanged
    assert script.read_text() == edited and not script.with_name("train_g0.sbatch.new").exists()


def test_submit_and_run_list_the_renders_waiting_in_new_files(tmp_path):
    import subprocess
    import sys

    from hpcffn.plan.render import pending_renders

    spec_path = write_spec(tmp_path)
    planned, _ = do_plan(spec_path)
    script = tmp_path / "work" / "jobs" / "train" / "train_g0.sbatch"
    script.write_text(script.read_text() + "# mine\n")
    write_spec(tmp_path, spec_dict(cluster={"profile": "local", "train": {"time": "00:45:00"}}), data=False)
    do_plan(spec_path)
    assert pending_renders(planned.plan.layout) == ["jobs/train/train_g0.sbatch.new"]
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "submit", str(tmp_path / "work"), "--dry-run"],
                          capture_output=True, text=True, check=False)
    assert "note: 1 newer render(s) wait beside scripts you edited" in proc.stderr
    assert "jobs/train/train_g0.sbatch.new" in proc.stderr


def test_existing_script_without_plan_is_not_overwritten(tmp_path):
    spec_path = write_spec(tmp_path)
    mine = tmp_path / "work" / "jobs" / "infer" / "infer_g0.sbatch"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/bash\necho my own\n")
    _, report = do_plan(spec_path)
    assert mine.read_text() == "#!/bin/bash\necho my own\n"
    assert report.kept_edited == ["jobs/infer/infer_g0.sbatch"]


def test_dry_run_writes_nothing(tmp_path):
    spec_path = write_spec(tmp_path)
    _, report = do_plan(spec_path, dry_run=True)
    assert len(report.written) == 13 and not (tmp_path / "work").exists()


def test_user_template_overrides_one_stage(tmp_path):
    tdir = tmp_path / "mytemplates"
    tdir.mkdir()
    (tdir / "train.sbatch.j2").write_text(
        '{% extends "base.sbatch.j2" %}\n{% block command %}\n'
        '"${HPCFFN[@]}" stage train --plan "$PLAN" --group "$GROUP"  # site override for {{ job|q }}\n'
        '{% endblock %}\n')
    spec = spec_dict(templates="mytemplates")
    planned, _ = do_plan(write_spec(tmp_path, spec))
    assert "# site override for train_g0" in planned.scripts["jobs/train/train_g0.sbatch"]
    assert "site override" not in planned.scripts["jobs/infer/infer_g0.sbatch"]
    # --templates on the command line wins over the spec
    other = tmp_path / "other"
    other.mkdir()
    (other / "infer.sbatch.j2").write_text('{% extends "base.sbatch.j2" %}{% block command %}echo other{% endblock %}')
    planned, _ = do_plan(tmp_path / "exp.yaml", templates=other)
    assert "echo other" in planned.scripts["jobs/infer/infer_g0.sbatch"]
    assert "site override" not in planned.scripts["jobs/train/train_g0.sbatch"]


def test_template_with_undefined_variable_is_an_error(tmp_path):
    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "evaluate.sbatch.j2").write_text('{% extends "base.sbatch.j2" %}{% block command %}{{ nope }}{% endblock %}')
    with pytest.raises(HpcffnError, match="evaluate.sbatch.j2.*nope"):
        make_plan(write_spec(tmp_path), tdir)


def test_injection_in_paths_is_quoted(tmp_path):
    """A hostile image path lands in the script as one quoted word and never runs."""
    image = "/img/x y;$(touch PWNED)`touch PWNED2`'.sif"
    spec = spec_dict(container={"runtime": "apptainer", "image": image, "auto_bind": False})
    do_plan(write_spec(tmp_path, spec))
    script = tmp_path / "work" / "jobs" / "evaluate" / "evaluate.sbatch"
    settings = [line for line in script.read_text().splitlines() if line.startswith(("IMAGE=", "BINDS=", "HPCFFN=("))]
    probe = "\n".join(settings) + '\nprintf "%s\\n" "$IMAGE" "${HPCFFN[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [image, "apptainer", "exec", image, "hpcffn"]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


@pytest.mark.parametrize("field,value", [
    ("container", {"runtime": "apptainer", "image": "i.sif", "binds": ["/a,b:/c"]}),
    ("container", {"runtime": "none", "command": "hpcffn; rm -rf ~"}),
    ("workdir", "work/$(id)"),
])
def test_injection_in_fields_is_rejected(tmp_path, field, value):
    with pytest.raises(HpcffnError, match=field):
        make_plan(write_spec(tmp_path, spec_dict(**{field: value})))


def test_replan_of_another_experiment_refused(tmp_path):
    from hpcffn.plan.planner import check_workdir_owner

    spec_path = write_spec(tmp_path)
    do_plan(spec_path)
    write_spec(tmp_path, spec_dict(name="other"), data=False)
    planned = make_plan(spec_path)
    with pytest.raises(HpcffnError, match="belongs to experiment 'exp'"):
        check_workdir_owner(planned, force=False)
    check_workdir_owner(planned, force=True)


def test_plan_json_is_valid_json_with_resolved_spec(tmp_path):
    do_plan(write_spec(tmp_path))
    raw = json.loads((tmp_path / "work" / "plan.json").read_text())
    assert raw["spec"]["cluster"]["profile"] == "local"
    assert raw["spec"]["stages"] == ["partitions", "coordinates", "train", "infer", "stitch", "evaluate"]
    assert raw["ffn"]["model"]["depth"] == 2


def test_replan_with_fewer_groups_reports_stale_scripts(tmp_path):
    spec_path = write_spec(tmp_path)
    do_plan(spec_path)
    write_spec(tmp_path, spec_dict(subvolume={"size": [64, 64, 64], "groups": 1}), data=False)
    _, report = do_plan(spec_path)
    assert report.stale == ["jobs/coordinates/coordinates_g1.sbatch", "jobs/infer/infer_g1.sbatch",
                            "jobs/train/train_g1.sbatch"]
    assert (tmp_path / "work" / "jobs" / "train" / "train_g1.sbatch").exists()  # never deleted


def test_infer_again_without_train_uses_the_groups_models(tmp_path):
    """Re-planning only infer+evaluate after training needs no explicit checkpoint."""
    plan = make_plan(write_spec(tmp_path, spec_dict(stages=["infer", "evaluate"]))).plan
    assert [j.name for j in plan.jobs] == ["infer_g0", "infer_g1", "evaluate"] and len(plan.groups) == 2
    assert plan.job("infer_g0").depends_on == [] and plan.job("infer_g1").depends_on == []


def test_plan_is_deterministic(tmp_path):
    spec_path = write_spec(tmp_path)
    do_plan(spec_path)
    first = (tmp_path / "work" / "plan.json").read_bytes()
    _, report = do_plan(spec_path)
    assert (tmp_path / "work" / "plan.json").read_bytes() == first
    assert report.written == [] and len(report.unchanged) == 13


def test_ten_thousand_tiles_keep_the_script_count_small(tmp_path):
    spec = spec_dict(volumes=[{"name": "big", "raw": "nowhere/raw", "groundtruth": "nowhere/gt", "polarity": "white",
                               "shape": [5000, 10000, 25000]}],
                     subvolume={"size": [500, 500, 500], "groups": 50, "array_throttle": 100})
    planned = make_plan(write_spec(tmp_path, spec, data=False))
    assert len(planned.plan.tiles) == 10_000 and len(planned.scripts) == 1 + 1 + 50 + 50 + 50 + 3 + 9 + 1  # stitch: 3 steps + a pyramid level each
    # 200 tiles of 500^3 per group and no max_records: the plan warns about the coordinate files.
    assert any(w.startswith("ffn.coordinates.max_records is not set: group g0 (25.0 G voxels) may get ~75 G")
               for w in planned.warnings), planned.warnings
    assert "#SBATCH --array=0-199%100" in planned.scripts["jobs/infer/infer_g0.sbatch"]
    assert {len(g.tiles) for g in planned.plan.groups} == {200}


def test_replan_reads_the_previous_hashes_from_the_plan_head(tmp_path):
    """units/plan.head.json carries the jobs' hashes (plan.json's tiles are not read); without
    it, plan.json; without plan.json, nothing was planned."""
    from hpcffn.plan.render import previous_hashes

    spec = write_spec(tmp_path, spec_dict())
    planned = make_plan(spec)
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    layout = planned.plan.layout
    expected = {j.script: j.sha256 for j in planned.plan.jobs}
    assert previous_hashes(layout) == expected
    layout.plan_head.unlink()
    assert previous_hashes(layout) == expected
    layout.plan.unlink()
    assert previous_hashes(layout) == {}
