"""ffn.inference.consensus in the plan: the reverse and consensus jobs, their dependencies, resources,
outputs and scripts; a plan without it has none of them. Login-node code only (no TensorFlow)."""

from __future__ import annotations

import copy

import pytest
from plan_helpers import BASE_SPEC, spec_dict, write_spec

from hpcffn.core.errors import HpcffnError
from hpcffn.plan.planner import make_plan


def _spec(tmp_path, consensus=None, **inference):
    ffn = copy.deepcopy(BASE_SPEC["ffn"])
    ffn["inference"] = dict(inference, **({"consensus": consensus} if consensus is not None else {}))
    return write_spec(tmp_path, spec_dict(ffn=ffn))


def test_consensus_adds_a_reverse_array_per_group_and_a_consensus_array(tmp_path):
    planned = make_plan(_spec(tmp_path, {"passes": ["forward", "reverse"], "split_min_size": 500}))
    plan = planned.plan
    jobs = {j.name: j for j in plan.jobs}
    names = [j.name for j in plan.jobs]
    assert names.index("reverse_g0") > names.index("infer_g1") and names.index("consensus") < names.index("joins")
    for g in ("g0", "g1"):
        rev, fwd = jobs[f"reverse_{g}"], jobs[f"infer_{g}"]
        assert rev.stage == "reverse" and rev.units == fwd.units and rev.group == g
        assert [d.job for d in rev.depends_on] == [f"infer_{g}"]
    assert jobs["consensus"].units == [t.name for t in plan.tiles]
    assert [d.job for d in jobs["consensus"].depends_on] == ["reverse_g0", "reverse_g1"]
    assert [d.job for d in jobs["joins"].depends_on] == ["consensus"]
    reverse = planned.scripts[jobs["reverse_g0"].script]
    assert "--pass reverse" in reverse and "--requeue" in reverse and "--signal=B:USR1@" in reverse
    consensus = planned.scripts[jobs["consensus"].script]
    assert "stage consensus --plan" in consensus and "--requeue" not in consensus
    tile = plan.tiles[0].name
    assert plan.infer_output("infer", tile).parent.name == "forward"
    assert plan.infer_output("reverse", tile).parent.name == "reverse"
    assert plan.infer_output("consensus", tile) == plan.layout.segmentation(tile)


def test_without_consensus_the_plan_has_no_such_jobs_and_the_forward_pass_writes_the_tile(tmp_path):
    plan = make_plan(_spec(tmp_path)).plan
    assert not {j.stage for j in plan.jobs} & {"reverse", "consensus"}
    assert "consensus" not in plan.ffn.model_dump()["inference"] and "consensus" not in plan.spec.ffn["inference"]
    tile = plan.tiles[0].name
    assert plan.infer_output("infer", tile) == plan.layout.segmentation(tile)


@pytest.mark.parametrize(("consensus", "inference", "needle"), [
    ({"passes": ["reverse", "forward"]}, {}, "must be [forward, reverse]"),
    ({"split_min_size": -1}, {}, "split_min_size"),
    (None, {"seed_policy": "invert_origins"}, "set ffn.inference.consensus"),
])
def test_bad_consensus_settings_name_the_field(tmp_path, consensus, inference, needle):
    with pytest.raises(HpcffnError, match="ffn.inference") as err:
        make_plan(_spec(tmp_path, consensus, **inference))
    assert needle in str(err.value)
