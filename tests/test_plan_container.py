"""The container prefix: binds, --nv only for GPU stages, runtime none, quoting."""

from __future__ import annotations

import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.core.errors import HpcffnError
from hpcffn.plan.container import argv, bind_list, shell_array
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir
from hpcffn.plan.spec import ContainerSpec


def test_auto_binds_skip_what_a_same_path_bind_covers():
    c = ContainerSpec(image="x.sif", binds=["/scratch", "/data:/in:ro"])
    binds = bind_list(c, ["/data/raw", "/data/raw/sub", "/home/me/gt"], ["/scratch/me/work"])
    # /scratch/me/work is visible through /scratch; /data is mounted elsewhere (/in), so
    # /data/raw still needs its own bind; /data/raw/sub lies inside /data/raw.
    assert binds == ["/scratch", "/data:/in:ro", "/data/raw:/data/raw:ro", "/home/me/gt:/home/me/gt:ro"]
    assert bind_list(ContainerSpec(image="x.sif", auto_bind=False, binds=["/a"]), ["/b"], ["/c"]) == ["/a"]


def test_inputs_are_bound_read_only_and_the_workdir_writable():
    c = ContainerSpec(image="x.sif")
    # A workdir inside an input folder is mounted writable on top of the read-only input;
    # an input inside the workdir (converted data) is reached through the workdir.
    assert bind_list(c, ["/data", "/scratch/work/data"], ["/scratch/work"]) == ["/data:/data:ro", "/scratch/work"]
    assert bind_list(c, ["/data"], ["/data/work"]) == ["/data:/data:ro", "/data/work"]
    assert bind_list(c, ["/same"], ["/same"]) == ["/same"]
    # The user's read-only bind of a parent does not make the workdir writable; a plain one does.
    assert bind_list(ContainerSpec(image="x.sif", binds=["/proj:/proj:ro"]), ["/proj/in"], ["/proj/work"]) == [
        "/proj:/proj:ro", "/proj/work"]
    assert bind_list(ContainerSpec(image="x.sif", binds=["/proj"]), ["/proj/in"], ["/proj/work"]) == ["/proj"]


def test_exec_prefix_per_runtime():
    c = ContainerSpec(runtime="singularity", image="/img/h.sif", nv=True)
    assert argv(c, ["/a", "/b"], gpu=True) == ["singularity", "exec", "--nv", "--bind", "/a,/b", "/img/h.sif", "hpcffn"]
    assert argv(c, [], gpu=False) == ["singularity", "exec", "/img/h.sif", "hpcffn"]
    assert shell_array(c, ["/a"], gpu=True) == 'singularity exec --nv --bind "$BINDS" "$IMAGE" hpcffn'
    assert shell_array(ContainerSpec(runtime="apptainer", image="i", nv=False), [], gpu=True) == 'apptainer exec "$IMAGE" hpcffn'
    assert shell_array(ContainerSpec(runtime="none", command="/opt/my env/bin/hpcffn".replace(" ", "_")), [], gpu=True) == "/opt/my_env/bin/hpcffn"


def test_relative_binds_and_image_resolve_against_the_spec(tmp_path):
    spec = spec_dict(container={"runtime": "apptainer", "image": "img/h.sif", "binds": ["ref:/ref:ro"]})
    planned = make_plan(write_spec(tmp_path, spec))
    text = planned.scripts["jobs/train/train_g0.sbatch"]
    assert f"IMAGE={tmp_path}/img/h.sif\n" in text
    assert f"BINDS={tmp_path}/ref:/ref:ro,{tmp_path}/data:{tmp_path}/data:ro,{tmp_path}/work\n" in text
    assert planned.plan.spec.container["image"] == f"{tmp_path}/img/h.sif"


def test_missing_image_is_a_warning_until_it_is_built(tmp_path):
    spec = spec_dict(container={"runtime": "apptainer", "image": "img/h.sif"})
    planned = make_plan(write_spec(tmp_path, spec))
    assert any(w.startswith(f"container.image: {tmp_path}/img/h.sif does not exist yet") for w in planned.warnings)
    (tmp_path / "img").mkdir()
    (tmp_path / "img/h.sif").write_bytes(b"sif")
    assert not any("container.image" in w for w in make_plan(write_spec(tmp_path, spec)).warnings)


def test_unwritable_workdir_is_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    planned = make_plan(write_spec(tmp_path, spec_dict(workdir="afile/work")))
    with pytest.raises(HpcffnError, match="cannot write into the workdir"):
        write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
