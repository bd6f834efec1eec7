"""A re-plan must not change what tasks still in the queue work on."""

import pytest

from hpcffn.core.errors import HpcffnError
from hpcffn.jobs import slurm
from hpcffn.jobs.state import State, Submission, save_state
from hpcffn.jobs.submit import check_replan


def _state(plan):
    subs = [Submission(job=j.name, job_id=str(10 + i), submitted="t", sha256="x",
                       tasks=list(range(len(j.units))) if j.array else None)
            for i, j in enumerate(plan.jobs)]
    save_state(plan.layout.state, State(submissions=subs))


def _query(state_of_partitions: str):
    def query(ids):
        return {i: slurm.TaskInfo(id=i, state=state_of_partitions if i.startswith("10") else "COMPLETED")
                for i in ids}
    return query


def _regridded(plan):
    """The same plan with the partitions array over other tiles (as after changing the grid)."""
    jobs = [j.model_copy(update={"units": list(reversed(j.units))}) if j.name == "partitions" else j
            for j in plan.jobs]
    return plan.model_copy(update={"jobs": jobs})


def test_changed_units_under_a_pending_job_are_refused(mini_plan):
    _state(mini_plan)
    with pytest.raises(HpcffnError, match="partitions are still pending or running.*hpcffn cancel"):
        check_replan(mini_plan, _regridded(mini_plan), query=_query("PENDING"))


def test_finished_jobs_or_unchanged_units_allow_a_replan(mini_plan):
    _state(mini_plan)
    check_replan(mini_plan, _regridded(mini_plan), query=_query("COMPLETED"))
    check_replan(mini_plan, mini_plan, query=_query("RUNNING"))


def test_unanswered_slurm_says_to_force(mini_plan):
    _state(mini_plan)

    def down(ids):
        raise HpcffnError("SLURM does not answer")

    with pytest.raises(HpcffnError, match="re-plan with --force if none are"):
        check_replan(mini_plan, _regridded(mini_plan), query=down)
