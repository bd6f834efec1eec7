"""submit records each sbatch call as a journal line, and state.json once: nothing queued is forgotten.

A submit killed (kill -9) or stopped after some sbatch calls leaves every job it queued visible
to status, cancel and `submit --resume`; a plain re-run submits exactly the rest. Without SLURM:
stand-in sbatch scripts on PATH, and a fake scheduler's queue where one is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_slurm import FakeSlurm
from plan_helpers import spec_dict, write_h5, write_spec

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import load_plan
from hpcffn.jobs import journal, slurm
from hpcffn.jobs import state as state_mod
from hpcffn.jobs.state import (
    State,
    Submission,
    load_state,
    record,
    recorded,
    save_state,
)
from hpcffn.jobs.status import collect
from hpcffn.jobs.submit import observe, submit
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir

REPO = Path(__file__).resolve().parent.parent
LIMIT = 11  # cluster.max_array_size: 30-tile arrays go in as 3 pieces


def _plan(tmp_path: Path):
    """A planned workdir of 30 tiles (1 group), arrays split into pieces of 11."""
    spec = spec_dict(subvolume={"size": [21, 21, 21], "overlap": [2, 2, 2], "groups": 1},
                     cluster={"profile": "local", "max_array_size": LIMIT, "max_submit_jobs": 100000})
    path = write_spec(tmp_path, spec, data=False)
    write_h5(tmp_path / "data" / "v1.h5", shape=(21, 105, 126))
    planned = make_plan(path)
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    return load_plan(tmp_path / "work")


def _sbatch(folder: Path, fail_on: int | None = None, how: str = "") -> str:
    """PATH with a stand-in sbatch: `--test-only` accepts, else prints ids 1, 2, ...; call `fail_on`
    runs `how` instead (kill -9 of hpcffn, or a refusal)."""
    folder.mkdir(parents=True, exist_ok=True)
    count = folder / "count"
    fail = f'[ "$n" = "{fail_on}" ] && {{ {how}; }}\n' if fail_on else ""
    (folder / "sbatch").write_text(
        "#!/bin/bash\n"
        'for a in "$@"; do [ "$a" = "--test-only" ] && { echo "sbatch: Job 1 to start at now" >&2; exit 0; }; done\n'
        f"n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n{fail}echo $n\n")
    (folder / "sbatch").chmod(0o755)
    for name in ("scontrol", "sacctmgr"):
        (folder / name).write_text("#!/bin/bash\nexit 1\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _covered(subs: list[Submission]) -> dict[str, list]:
    """Every (job -> tasks) the submissions cover, in order, repeats kept."""
    out: dict[str, list] = {}
    for s in subs:
        out.setdefault(s.job, []).extend(s.tasks if s.tasks is not None else [None])
    return out


def _queue_all_pending() -> FakeSlurm:
    """SLURM holding every job it is asked about, pending; sbatch goes to the stand-in on PATH."""
    return FakeSlurm(queue=lambda ids: {i: slurm.TaskInfo(id=i, state="PENDING") for i in ids})


def test_submit_killed_half_way_forgets_no_job_it_queued(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    kill_on = 8  # partitions (3 pieces), coordinates, train, then infer_g0: 2 of its 3 pieces
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": _sbatch(tmp_path / "bin", kill_on, "kill -9 $PPID; sleep 5")}
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "submit", str(plan.layout.root)], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    path = plan.layout.state
    assert not path.exists() and journal.path_of(path).is_file() and recorded(path)  # never compacted
    subs = load_state(path).submissions
    assert [s.job_id for s in subs] == [str(i) for i in range(1, kill_on)]
    assert any(s.array_offset for s in subs)  # pieces were among them
    partial = [j for j in plan.jobs if j.array and 0 < len(_covered(subs).get(j.name, [])) < len(j.units)]
    assert partial, "the kill should land between two pieces of one array"

    queue = _queue_all_pending()
    views = observe(plan, load_state(path), query=queue.query)  # what status, cancel and --resume see
    for s in subs:
        for t in s.tasks if s.tasks is not None else [None]:
            v = next(v for v in views[s.job] if v.task == t)
            assert v.category == "alive" and v.sub.job_id == s.job_id
    rows = {r.job: r for r in collect(plan, scheduler=queue).rows}  # hpcffn status
    assert rows["infer_g0"].job_ids == ["6", "7"] and rows["infer_g0"].states == {"PENDING": 22,
                                                                                          "NOT SUBMITTED": 8}
    from hpcffn.jobs.admin import cancel

    cancel(plan, echo=lambda *_: None, scheduler=queue)
    assert set(queue.cancelled) == {s.job_id for s in subs}

    monkeypatch.setenv("PATH", _sbatch(tmp_path / "bin"))
    new = submit(plan, resume=True, echo=lambda *_: None, scheduler=queue)  # submits the rest, nothing twice
    assert new and all(int(s.job_id) > kill_on for s in new)
    every = load_state(path).submissions
    assert not journal.path_of(path).exists() and json.loads(path.read_text())["submissions"]  # compacted
    covered = _covered(every)
    for job in plan.jobs:
        expect = list(range(len(job.units))) if job.array else [None]
        assert sorted(covered[job.name], key=lambda t: -1 if t is None else t) == expect, job.name
    assert submit(plan, echo=lambda *_: None, scheduler=queue) == []  # everything is alive now: nothing more


def test_sbatch_refusing_half_way_records_what_went_in_with_one_state_write(tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    monkeypatch.setenv("PATH", _sbatch(tmp_path / "bin", 9, 'echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1'))
    writes = []
    real = state_mod.atomic_write_text
    monkeypatch.setattr(state_mod, "atomic_write_text", lambda p, text: (writes.append(p), real(p, text)))
    with pytest.raises(HpcffnError, match="sbatch refused .*QOSMaxSubmitJobPerUserLimit"):
        submit(plan, echo=lambda *_: None)
    assert writes == [plan.layout.state]  # once at the end, not once per sbatch call
    assert not journal.path_of(plan.layout.state).exists()
    assert [s.job_id for s in load_state(plan.layout.state).submissions] == [str(i) for i in range(1, 9)]


def _sub(jid: str) -> Submission:
    return Submission(job="infer_g0", job_id=jid, submitted="2026-01-01T00:00:00+0000", sha256="x", tasks=[0, 1])


def test_journal_folds_in_skips_torn_lines_and_drops_what_state_json_already_has(tmp_path):
    path = tmp_path / "state.json"
    assert load_state(path).submissions == [] and not recorded(path)
    record(path, _sub("1"))
    with open(journal.path_of(path), "ab") as fh:
        fh.write(b'{"job": "infer_g0", "job_id": "2", "subm')  # a writer killed mid-line
    assert [s.job_id for s in load_state(path).submissions] == ["1"]  # the torn line is not a record
    record(path, _sub("3"))  # starts on a line of its own
    assert [s.job_id for s in load_state(path).submissions] == ["1", "3"]
    # Killed between writing state.json and removing the journal: each record once.
    state_path_text = State(submissions=[_sub("0"), _sub("1"), _sub("3")]).model_dump_json()
    path.write_text(state_path_text)
    assert [s.job_id for s in load_state(path).submissions] == ["0", "1", "3"]
    save_state(path, load_state(path))
    assert not journal.path_of(path).exists() and [s.job_id for s in load_state(path).submissions] == ["0", "1", "3"]
