"""plan.json lookups: names, array task indices, and one-line errors."""

import json

import pytest

from hpcffn import PLAN_FORMAT
from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import FFNParams
from hpcffn.core.plan_model import (
    Box,
    JobPlan,
    Plan,
    TilePlan,
    VolumePlan,
    load_plan,
    write_plan,
)


def _plan(tmp_path):
    box = Box(start=(0, 0, 0), size=(4, 4, 4))
    tiles = [TilePlan(name=n, volume="v", index=(0, 0, i), box=box, infer_box=box, group=g)
             for i, (n, g) in enumerate([("v_a", None), ("v_b", "g0"), ("v_c", "g0")])]
    jobs = [JobPlan(name="partitions", stage="partitions", script="jobs/p.sbatch", sha256="x", array=True,
                    units=["v_b", "v_c"])]
    return Plan(hpcffn_version="t", name="t", workdir=str(tmp_path), spec_file="exp.yaml", spec={},
                ffn=FFNParams(), volumes=[VolumePlan(name="v", shape=(4, 4, 12), raw="a.h5:raw", raw_source="a.h5:raw")],
                tiles=tiles, groups=[], jobs=jobs)


def test_task_index_is_a_position_in_the_jobs_units(tmp_path):
    plan = _plan(tmp_path)
    assert plan.task_unit("partitions", "0") == "v_b"
    assert plan.task_unit("partitions", 1) == "v_c"
    assert plan.task_unit("partitions", "v_a") == "v_a"  # names pass through
    assert plan.task_unit("infer", "2") == "2"  # no such job: plain index, as plan.tiles
    assert plan.tile(plan.task_unit("infer", "2")).name == "v_c"
    with pytest.raises(HpcffnError, match="task index 2 is out of range"):
        plan.task_unit("partitions", "2")


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(HpcffnError, match="no tile named 'nope'.*known: v_a, v_b, v_c"):
        _plan(tmp_path).tile("nope")


def test_plan_of_another_format_is_refused(tmp_path):
    plan = _plan(tmp_path)
    write_plan(plan, tmp_path / "plan.json")
    assert load_plan(tmp_path).tiles[1].name == "v_b"
    data = json.loads((tmp_path / "plan.json").read_text())
    data["format"] = PLAN_FORMAT - 1
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(HpcffnError, match="re-run `hpcffn plan"):
        load_plan(tmp_path)
    with pytest.raises(HpcffnError, match="no plan at"):
        load_plan(tmp_path / "missing")


def test_spec_sections_jobs_read_are_typed_and_an_older_plan_reads_and_writes_as_it_was(tmp_path):
    plan = _plan(tmp_path)
    write_plan(plan, tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    # A plan written before convert.clahe and the array limits: sections and keys are missing.
    data["spec"] = {"name": "t", "subvolume": {"size": [8, 9, 10], "overlap": [1, 1, 1], "min_edge": [2, 2, 2],
                                               "groups": 1, "array_throttle": None},
                    "cluster": {"profile": "local", "train": {"time": "1:00:00", "gpus": 1}}, "stages": ["train"]}
    (tmp_path / "plan.json").write_text(json.dumps(data, indent=1))
    loaded = load_plan(tmp_path)
    assert loaded.spec.subvolume.size == (8, 9, 10) and loaded.spec.convert.clahe.enabled is False
    assert loaded.spec.cluster.resources("train") == {"time": "1:00:00", "gpus": 1}
    written = json.loads(loaded.model_dump_json())["spec"]
    assert json.dumps(written) == json.dumps(data["spec"])  # nothing added, key order kept
    data["spec"]["subvolume"]["size"] = [8, 9]
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(HpcffnError, match="field spec.subvolume.size"):
        load_plan(tmp_path)


def test_array_limits_take_the_spec_then_slurm_then_the_profile():
    from hpcffn.core.plan_model import ClusterPlan

    both = ClusterPlan(max_array_size=None, max_submit_jobs=None, profile_max_array_size=50, profile_max_submit_jobs=9)
    assert both.array_limits() == (50, 9, "profile")
    assert both.array_limits(11, 5) == (11, 5, "slurm")
    assert both.model_copy(update={"max_array_size": 7}).array_limits(11, 5) == (7, 5, "spec")
    assert ClusterPlan().array_limits() == (None, None, None)
