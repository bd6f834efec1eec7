"""Fast tests of the job machinery without SLURM: parsing, dependency planning, resume, state."""

from __future__ import annotations

import json
import threading

import pytest
from fake_slurm import FakeSlurm

from hpcffn.core.errors import HpcffnError, SchedulerMissing, SchedulerNotAnswering
from hpcffn.jobs import slurm
from hpcffn.jobs.state import State, Submission, load_state, locked, save_state
from hpcffn.jobs.status import collect
from hpcffn.jobs.submit import (
    check_scripts,
    dependency_string,
    dry_run_script,
    observe,
    plan_steps,
    topo_order,
)


# ------------------------------------------------------------------------------- slurm.py
def test_array_spec_roundtrip():
    assert slurm.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert slurm.array_spec([3], throttle=2) == "3%2"
    assert slurm.expand_array("0-2,5,7-8%4") == [0, 1, 2, 5, 7, 8]
    assert slurm.expand_array("0-6:3") == [0, 3, 6]


def test_parse_parsable_keeps_id_before_cluster():
    assert slurm.parse_parsable("1234\n") == "1234"
    assert slurm.parse_parsable("1234;ibex\n") == "1234"
    with pytest.raises(HpcffnError, match="instead of a job id"):
        slurm.parse_parsable("sbatch: error: nope")


def test_parse_squeue_json_expands_pending_arrays_and_skips_bad_records():
    text = json.dumps({"jobs": [
        {"job_id": 7, "array_job_id": 5, "array_task_id": 1, "array_task_string": "", "job_state": "FAILED",
         "state_reason": "NonZeroExitCode", "exit_code": 768, "restart_cnt": 0},
        {"job_id": 5, "array_job_id": 5, "array_task_id": None, "array_task_string": "2-3%2", "job_state": "PENDING",
         "state_reason": "JobArrayTaskLimit", "exit_code": 0},
        {"job_id": 9, "array_job_id": 0, "array_task_id": None, "job_state": ["COMPLETED"], "exit_code": 0},
        {"job_id": 10, "array_job_id": "garbage", "array_task_id": 1, "job_state": "RUNNING"},
        "not a record",
    ]})
    got = slurm.parse_squeue_json(text)
    assert got["5_1"].state == "FAILED" and got["5_1"].exit_code == 3 and got["5_1"].failed
    assert got["5_2"].state == "PENDING" and got["5_3"].alive
    assert got["9"].state == "COMPLETED" and not got["9"].alive
    assert "10_1" not in got
    assert slurm.parse_squeue_json("not json") == {}
    assert slurm.parse_squeue_json('{"jobs": null}') == {}
    assert slurm.parse_squeue_json('{"jobs": {"id": 1}}') == {}


def test_dependency_never_satisfied_is_not_alive():
    info = slurm.TaskInfo(id="3", state="PENDING", reason="DependencyNeverSatisfied")
    assert not info.alive and info.failed


def test_parse_scontrol_and_sacct():
    line = ("JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=x JobState=TIMEOUT Reason=TimeLimit "
            "Restarts=1 ExitCode=0:15 StdOut=/w/logs/x_10_2.out")
    got = slurm.parse_scontrol(line + "\nJobId=13 JobName=y JobState=RUNNING Reason=None ExitCode=0:0\n")
    assert got["10_2"].state == "TIMEOUT" and got["10_2"].restarts == 1
    assert got["13"].alive
    sacct = "20|COMPLETED|0:0|None\n21_[1-2]|PENDING|0:0|Dependency\n21_0|CANCELLED by 0|0:0|None\n"
    got = slurm.parse_sacct(sacct)
    assert got["20"].state == "COMPLETED"
    assert got["21_2"].state == "PENDING"
    assert got["21_0"].state == "CANCELLED"


def test_sbatch_options_stop_at_first_command_and_pattern_expansion(tmp_path):
    script = tmp_path / "a.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -J name1\n#SBATCH --output=logs/s/%x_%A_%a.out\n# comment\n"
                      "#SBATCH --cpus-per-task=4\necho hi\n#SBATCH --time=5\n")
    opts = slurm.sbatch_options(script)
    assert opts == {"job-name": "name1", "output": "logs/s/%x_%A_%a.out", "cpus-per-task": "4"}
    assert slurm.expand_pattern(opts["output"], "name1", "42", 3) == "logs/s/name1_42_3.out"
    assert slurm.expand_pattern("%x-%j-%%-%4a", "n", "42", 3) == "n-42-%-0003"


def test_missing_sbatch_is_one_line(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SchedulerMissing, match="`sbatch` is not on PATH"):
        slurm.Slurm().sbatch(["sbatch", "--parsable", "x.sbatch"], cwd=".")


# ------------------------------------------------------------------------------ submit.py
def _sub(job, jid, tasks=None, sha="x"):
    return Submission(job=job, job_id=jid, submitted="t", sha256=sha, tasks=tasks)


def _fake_query(states: dict[str, str]):
    def query(ids):
        out = {}
        for i in ids:
            st = states.get(i, "COMPLETED")
            reason = "DependencyNeverSatisfied" if st == "CANCELLED" else "None"
            out[i] = slurm.TaskInfo(id=i, state=st, reason=reason)
        return out
    return query


def _submitted_all(plan, state):
    ids = {"partitions": "10", "coordinates_g0": "11", "coordinates_g1": "12", "train_g0": "13", "train_g1": "14",
           "infer": "15", "evaluate": "16"}
    for job in plan.jobs:
        state.submissions.append(_sub(job.name, ids[job.name], list(range(len(job.units))) if job.array else None))
    _outputs(plan)
    return ids


def _outputs(plan):
    """Every unit's output, as the finished jobs would have left it (a task whose output is gone is not done)."""
    from hpcffn.jobs.observe import output_of

    for job in plan.jobs:
        for unit in job.units:
            path = output_of(plan, job.stage)(unit)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def test_fresh_plan_submits_everything_in_dependency_order(mini_plan):
    from hpcffn.jobs.state import State

    order = [j.name for j in topo_order(mini_plan)]
    assert order.index("partitions") < order.index("coordinates_g1") < order.index("train_g1") < order.index("infer")
    views = observe(mini_plan, State(), query=lambda ids: {})
    steps = plan_steps(mini_plan, views, resume=False)
    assert [s.job.name for s in steps] == order
    infer = next(s for s in steps if s.job.name == "infer")
    assert infer.array == "0-2%2"
    assert dependency_string(infer, {"train_g0": "13", "train_g1": "14"}) == "afterok:13:14"


def test_second_submit_submits_nothing_and_resume_only_the_failed_chain(mini_plan):
    from hpcffn.jobs.state import State

    state = State()
    _submitted_all(mini_plan, state)
    running = _fake_query({"15_0": "RUNNING", "15_1": "PENDING", "15_2": "PENDING", "16": "PENDING"})
    assert plan_steps(mini_plan, observe(mini_plan, state, query=running), resume=False) == []
    assert plan_steps(mini_plan, observe(mini_plan, state, query=running), resume=True) == []

    failed = _fake_query({"10_1": "FAILED", "11": "CANCELLED", "12": "CANCELLED", "13": "CANCELLED",
                          "14": "CANCELLED", "15_0": "CANCELLED", "15_1": "CANCELLED", "15_2": "CANCELLED",
                          "16": "CANCELLED"})
    views = observe(mini_plan, state, query=failed)
    assert plan_steps(mini_plan, views, resume=False) == []
    steps = plan_steps(mini_plan, views, resume=True)
    part = steps[0]
    assert part.job.name == "partitions" and part.tasks == [1] and part.array == "1%2"
    assert part.old_deps == []
    assert len(steps) == 7


def test_resume_chains_on_alive_upstream_tasks(mini_plan):
    from hpcffn.jobs.state import State

    state = State()
    _submitted_all(mini_plan, state)
    # infer task 2 failed while tasks 0/1 are still running; evaluate was cancelled with it.
    query = _fake_query({"15_0": "RUNNING", "15_1": "RUNNING", "15_2": "FAILED", "16": "CANCELLED"})
    steps = plan_steps(mini_plan, observe(mini_plan, state, query=query), resume=True)
    assert [s.job.name for s in steps] == ["infer", "evaluate"]
    assert steps[0].tasks == [2]
    evaluate = steps[1]
    assert dependency_string(evaluate, {"infer": "30"}) == "afterok:30:15_0:15_1"


def test_resume_resubmits_work_still_pending_on_a_failed_upstream_task(mini_plan):
    from hpcffn.jobs.state import State

    state = State()
    ids = _submitted_all(mini_plan, state)
    for sub in state.submissions:  # what submit recorded: each job waits (afterok) on its upstream jobs
        deps = [ids[d.job] for d in mini_plan.job(sub.job).depends_on]
        sub.command = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(deps)}"] if deps else [])
    # Partitions task 1 failed while task 2 still runs: SLURM keeps everything downstream PENDING
    # (Dependency) until the array ends, then kills it. Resume must resubmit that chain now.
    query = _fake_query({"10_1": "FAILED", "10_2": "RUNNING", "11": "PENDING", "12": "PENDING", "13": "PENDING",
                         "14": "PENDING", "15_0": "PENDING", "15_1": "PENDING", "15_2": "PENDING", "16": "PENDING"})
    steps = plan_steps(mini_plan, observe(mini_plan, state, query=query), resume=True)
    assert [(s.job.name, s.tasks) for s in steps] == [
        ("partitions", [1]), ("coordinates_g0", [None]), ("coordinates_g1", [None]), ("train_g0", [None]),
        ("train_g1", [None]), ("infer", [0, 1, 2]), ("evaluate", [None])]
    assert dependency_string(steps[1], {"partitions": "20"}) == "afterok:20:10_2"
    # Pending work whose upstream is only running (nothing failed) is left in the queue.
    query = _fake_query({"10_2": "RUNNING", "11": "PENDING", "12": "PENDING", "13": "PENDING", "14": "PENDING",
                         "15_0": "PENDING", "15_1": "PENDING", "15_2": "PENDING", "16": "PENDING"})
    assert plan_steps(mini_plan, observe(mini_plan, state, query=query), resume=True) == []
    # Upstream work SLURM forgot ("lost": no record, no marker) may have satisfied the dependency:
    # only that task is resubmitted; the pending dependants stay.
    forgot = _fake_query({"10_2": "RUNNING", "11": "PENDING", "12": "PENDING", "13": "PENDING", "14": "PENDING",
                          "15_0": "PENDING", "15_1": "PENDING", "15_2": "PENDING", "16": "PENDING"})
    views = observe(mini_plan, state, query=lambda ids: {k: v for k, v in forgot(ids).items() if k != "10_1"})
    assert [(s.job.name, s.tasks) for s in plan_steps(mini_plan, views, resume=True)] == [("partitions", [1])]


def test_filtered_submit_refuses_when_upstream_failed(mini_plan):
    from hpcffn.jobs.state import State

    state = State()
    _submitted_all(mini_plan, state)
    query = _fake_query({"13": "FAILED", "15_0": "CANCELLED", "15_1": "CANCELLED", "15_2": "CANCELLED",
                         "16": "CANCELLED"})
    with pytest.raises(HpcffnError, match="depends on train_g0.*--resume"):
        plan_steps(mini_plan, observe(mini_plan, state, query=query), resume=True, stages=["infer"])
    with pytest.raises(HpcffnError, match="--stage 'bogus' is not a stage"):
        plan_steps(mini_plan, observe(mini_plan, state, query=query), resume=True, stages=["bogus"])


def test_group_filter_selects_group_jobs_and_tasks(mini_plan):
    from hpcffn.jobs.state import State

    views = observe(mini_plan, State(), query=lambda ids: {})
    steps = plan_steps(mini_plan, views, resume=False, groups=["g1"], stages=["partitions", "coordinates"])
    assert [(s.job.name, s.tasks) for s in steps] == [("partitions", [1]), ("coordinates_g1", [None])]


def test_lost_jobs_count_as_done_only_with_a_marker(mini_plan):
    from hpcffn.jobs.state import State

    state = State()
    _submitted_all(mini_plan, state)
    marker = mini_plan.layout.marker("partitions", "v_z0_y0_x0")
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    views = observe(mini_plan, state, query=lambda ids: {})
    cats = [v.category for v in views["partitions"]]
    assert cats == ["done", "lost", "lost"]


def test_invalid_bash_and_changed_alive_script_are_refused(mini_plan):
    from hpcffn.jobs.state import State

    views = observe(mini_plan, State(), query=lambda ids: {})
    steps = plan_steps(mini_plan, views, resume=False)
    script = mini_plan.layout.root / "jobs/train/train_g1.sbatch"
    original = script.read_text()
    script.write_text(original + "\nif then fi (\n")
    with pytest.raises(HpcffnError, match=r"train_g1.sbatch is not valid bash"):
        check_scripts(mini_plan, steps, views)
    script.write_text(original + "\necho edited\n")
    state = State()
    _submitted_all(mini_plan, state)
    alive = _fake_query({"14": "PENDING"})
    views = observe(mini_plan, state, query=alive)
    with pytest.raises(HpcffnError, match="changed after it was submitted as job 14, which is still PENDING"):
        check_scripts(mini_plan, [], views)


def test_dry_run_script_is_valid_bash_and_quotes_paths(mini_plan, tmp_path):
    import subprocess

    from hpcffn.jobs.state import State

    steps = plan_steps(mini_plan, observe(mini_plan, State(), query=lambda ids: {}), resume=False)
    text = dry_run_script(mini_plan, steps)
    assert "--kill-on-invalid-dep=yes" in text and '"--dependency=afterok:${JOB_partitions}"' in text
    path = tmp_path / "dry.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


# ------------------------------------------------------------------------------- state.py
def test_state_roundtrip_lock_and_bad_file(tmp_path):
    from hpcffn.jobs.state import State

    path = tmp_path / "state.json"
    st = State(submissions=[_sub("a", "1", [0, 2])])
    save_state(path, st)
    assert load_state(path).submissions[0].task_id(2) == "1_2"
    with locked(path):
        errors = []

        def other():
            try:
                with locked(path):
                    pass
            except HpcffnError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        # flock is per open file description: a second open in this process conflicts too.
        assert errors and "another hpcffn submit/run holds" in errors[0]
    path.write_text("{broken")
    with pytest.raises(HpcffnError, match="not a readable hpcffn state file"):
        load_state(path)
    # A hand-edited job id would crash the SLURM queries later (int("abc")): refuse it here.
    path.write_text(json.dumps({"format": 1, "submissions": [{"job": "infer", "job_id": "abc", "submitted": "t",
                                                               "sha256": "x"}]}))
    with pytest.raises(HpcffnError, match="not a readable hpcffn state file"):
        load_state(path)


def test_whole_array_record_stands_for_every_task():
    text = json.dumps({"jobs": [{"job_id": 103, "array_job_id": 103, "array_task_id": None, "array_task_string": "",
                                 "job_state": "CANCELLED", "state_reason": "Dependency", "exit_code": 0}]})
    assert slurm.parse_squeue_json(text)["103_*"].state == "CANCELLED"
    assert "103_*" in slurm.parse_scontrol("JobId=103 ArrayJobId=103 ArrayTaskId=4294967294 JobState=CANCELLED")

    got = FakeSlurm({"squeue": (0, text, ""), "scontrol": (0, "", "")}).query(["103_0", "103_2", "7"])
    assert set(got) == {"103_0", "103_2"} and got["103_2"].state == "CANCELLED" and got["103_2"].id == "103_2"


def _tools(answers: dict[str, tuple[int, str]]) -> FakeSlurm:
    """Fake SLURM tools: each command name returns (exit code, stderr); sacct is absent."""
    return FakeSlurm({name: (rc, "", err) for name, (rc, err) in answers.items()})


def test_query_raises_when_slurm_does_not_answer(mini_plan):
    down = "squeue: fatal: Could not establish a configuration source"
    tools = _tools({"squeue": (1, "squeue: error: x\n" + down), "scontrol": (1, "scontrol: fatal: no config")})
    with pytest.raises(SchedulerNotAnswering, match="SLURM did not answer .*Could not establish"):
        tools.query(["12", "13_1"])
    # So resume does not take every submitted job for forgotten and submit it again ...
    state = State(submissions=[_sub("evaluate", "12")])
    with pytest.raises(HpcffnError, match="SLURM did not answer"):
        plan_steps(mini_plan, observe(mini_plan, state, query=tools.query), resume=True)
    # ... and status shows the table with a warning instead.
    save_state(mini_plan.layout.state, state)
    report = collect(mini_plan, scheduler=tools)
    assert any("SLURM did not answer" in w for w in report.warnings)
    assert not report.finished  # so `status --watch` keeps waiting instead of declaring the run over


def test_a_query_that_times_out_is_one_failed_source_other_errors_pass():
    # Told apart by type: a timeout reads as exit 124; any other error (SLURM missing) is raised.
    assert FakeSlurm({"squeue": SchedulerNotAnswering("`squeue` did not answer within 1 s")}).ask(["squeue"]).returncode == 124
    with pytest.raises(SchedulerMissing, match="not on PATH"):
        FakeSlurm({}).ask(["squeue"])
    # Words alone do not decide.
    with pytest.raises(HpcffnError, match="not installed"):
        FakeSlurm({"squeue": HpcffnError("`squeue` is not installed here: did not answer")}).ask(["squeue"])


def test_query_forgotten_job_is_an_answer():
    tools = _tools({"squeue": (1, "squeue: fatal: no JSON plugin"),
                    "scontrol": (1, "slurm_load_jobs error: Invalid job id specified")})
    assert tools.query(["12"]) == {}


def _local_sub(job, pid, host=None):
    from hpcffn.jobs.state import LocalTask

    return Submission(job=job, job_id="L1", submitted="t", sha256="x", local=True, runner_pid=pid, runner_host=host,
                      local_tasks={"0": LocalTask(state="RUNNING")})


def test_reused_runner_pid_is_not_a_live_local_run_and_is_never_signalled(mini_plan):
    import subprocess

    from hpcffn.jobs.admin import cancel

    # The runner died and its pid now belongs to an unrelated process: not alive, never killed.
    other = subprocess.Popen(["sleep", "60"])
    try:
        save_state(mini_plan.layout.state, State(submissions=[_local_sub("evaluate", other.pid)]))
        view = observe(mini_plan, load_state(mini_plan.layout.state))["evaluate"][0]
        assert view.category == "failed" and view.info.reason == "LocalRunnerGone"
        msgs = []
        cancel(mini_plan, echo=msgs.append)
        assert other.poll() is None and msgs == ["nothing to cancel: no selected job is pending or running"]
        # A runner on another host sharing the workdir: its record stands, and cancel says where it runs.
        save_state(mini_plan.layout.state, State(submissions=[_local_sub("evaluate", other.pid, "elsewhere")]))
        assert observe(mini_plan, load_state(mini_plan.layout.state))["evaluate"][0].category == "alive"
        msgs = []
        cancel(mini_plan, echo=msgs.append)
        assert other.poll() is None and msgs and "host elsewhere" in msgs[0]
    finally:
        other.kill()
        other.wait()


def test_a_replan_that_moves_units_to_other_indices_does_not_reuse_old_runs(mini_plan):
    from hpcffn.jobs.submit import task_units

    job = mini_plan.job("partitions")
    sub = _sub("partitions", "10", [0, 1, 2])
    sub.units = task_units(job, [0, 1, 2])
    state = State(submissions=[sub])
    done = _fake_query({})
    _outputs(mini_plan)
    assert [v.category for v in observe(mini_plan, state, query=done)["partitions"]] == ["done"] * 3
    # Re-planned: the grid changed and index 1 is another tile now; index 2 is unchanged.
    job.units = [job.units[0], "v_z1_y0_x0", job.units[2]]
    views = observe(mini_plan, state, query=done)["partitions"]
    assert [v.category for v in views] == ["done", "never", "done"]
