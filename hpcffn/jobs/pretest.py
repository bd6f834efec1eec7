"""All-or-nothing submit: ask sbatch about every script (`--test-only`) before queueing any.

Without it an invalid partition or account on a later job (train_g0) is found only after the
jobs before it (convert ... coordinates) are queued: a half-submitted chain. Dependencies are
left out of the test (the ids do not exist yet); everything else is the real command line.
"""

from __future__ import annotations

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.jobs import slurm


def require_all_accepted(plan: Plan, steps: list, max_array_size: int | None = None,
                         scheduler: slurm.Slurm | None = None) -> None:
    """Raise one line naming every job sbatch would refuse, and why; queue nothing.

    An array split under MaxArraySize is asked about its first piece (the others differ only in
    their task ids and offset).
    """
    scheduler = scheduler or slurm.Slurm()
    refused = []
    for step in steps:
        _, _, array = step.calls(max_array_size)[0]
        cmd = slurm.sbatch_command(step.job.script, array)
        ok, message = scheduler.test_only(cmd, cwd=plan.layout.root)
        if not ok:
            reason = " ".join((message.splitlines() or ["refused"])[-1].split())
            refused.append(f"{step.job.name} ({reason})")
    if refused:
        raise HpcffnError(
            f"nothing was submitted: `sbatch --test-only` refuses {'; '.join(refused)}; fix the spec's "
            "cluster/resources (or the script) and re-run `hpcffn plan` and `hpcffn submit`"
        )
