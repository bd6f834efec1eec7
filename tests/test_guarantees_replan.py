"""Issue 20's data-loss and re-plan items: no input overwritten across volumes, markers that
certify the unit they were made for, re-plans that cannot mix old and new results, plans
switched as one, deleted outputs noticed."""

from __future__ import annotations

import h5py
import pytest
from plan_helpers import spec_dict, write_h5, write_spec
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.core.errors import HpcffnError
from hpcffn.stages import convert

# ------------------------------------------------------------------ items 1 and 4: convert never writes an input


def _two_volumes(tmp_path, b_raw: str):
    """Volume a from TIF slices (converted to work/data/a.h5), volume b read from `b_raw`."""
    from plan_helpers import write_tif_dir

    write_tif_dir(tmp_path / "tifs", shape=(100, 130, 70))
    spec = spec_dict(volumes=[{"name": "a", "raw": "tifs"},
                              {"name": "b", "raw": b_raw, "groundtruth": "data/v1.h5:stack"}])
    return write_spec(tmp_path, spec)


def test_plan_refuses_another_volumes_input_where_convert_writes(tmp_path):
    path = _two_volumes(tmp_path, "work/data/a.h5:raw")
    user_file = write_h5(tmp_path / "work" / "data" / "a.h5", datasets=("raw", "my_annotations"))
    for command in ("validate", "plan"):
        assert_one_line_error(hpcffn(command, path), "volumes.1.raw", "convert writes volume a", "move your input")
    with h5py.File(user_file) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_plan_refuses_a_file_hpcffn_did_not_write_where_convert_writes(tmp_path):
    path = _two_volumes(tmp_path, "data/v1.h5:raw")
    user_file = write_h5(tmp_path / "work" / "data" / "a.h5", datasets=("raw", "my_annotations"))
    assert_one_line_error(hpcffn("plan", path), "work/data/a.h5 exists and was not written by hpcffn", "move")
    with h5py.File(user_file) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_convert_stage_refuses_a_user_file_that_appeared_after_the_plan(tmp_path):
    from hpcffn.core.plan_model import load_plan

    path = _two_volumes(tmp_path, "data/v1.h5:raw")
    assert hpcffn("plan", path).returncode == 0
    plan = load_plan(tmp_path / "work")
    convert.run_from_plan(plan, "a", progress=False)  # hpcffn's own output: replaced freely
    convert.run_from_plan(plan, "a", progress=False)
    target = plan.layout.converted_volume("a")
    target.unlink()
    plan.layout.marker("convert", "a").unlink()
    write_h5(target, datasets=("raw", "my_annotations"))
    with pytest.raises(HpcffnError, match="was not written by hpcffn"):
        convert.run_from_plan(plan, "a", progress=False)
    with h5py.File(target) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_standalone_convert_refuses_its_input_as_output_even_with_overwrite(tmp_path):
    x = write_h5(tmp_path / "x.h5", datasets=("raw", "my_annotations"))
    assert_one_line_error(hpcffn("convert", "--raw", f"{x}:raw", "--output", x, "--overwrite"),
                          "is also the input --raw", "another --output")
    with h5py.File(x) as fh:
        assert set(fh) == {"raw", "my_annotations"}


# ------------------------------------------------------------------ items 2, 7, 8, 11: markers certify their unit


def _planned(tmp_path, **changes):
    """`hpcffn plan` of BASE_SPEC with `changes` (top-level keys; ffn merged), through the CLI."""
    import yaml

    from hpcffn.core.plan_model import load_plan

    spec = spec_dict()
    ffn = changes.pop("ffn", None)
    spec.update(changes)
    if ffn:
        for section, values in ffn.items():
            spec["ffn"].setdefault(section, {}).update(values)
    path = tmp_path / "exp.yaml"
    if not (tmp_path / "data" / "v1.h5").exists():
        write_spec(tmp_path, spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = hpcffn("plan", path)
    return proc, load_plan(tmp_path / "work")


def _finish_everything(plan):
    """What a whole local `hpcffn run` leaves: every unit's output, its marker, COMPLETED records."""
    from hpcffn.jobs.state import LocalTask, State, Submission, save_state
    from hpcffn.jobs.status import output_of
    from hpcffn.jobs.submit import task_units
    from hpcffn.stages.markers import mark_done

    subs = []
    for k, job in enumerate(plan.jobs):
        tasks = list(range(len(job.units))) if job.array else [None]
        for unit in job.units:
            out = output_of(plan, job.stage)(unit)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
            mark_done(plan, job.stage, unit)
        subs.append(Submission(job=job.name, job_id=f"L{k + 1}", submitted="t", sha256="x", local=True,
                               tasks=tasks if job.array else None, units=task_units(job, tasks),
                               local_tasks={str(t or 0): LocalTask(state="COMPLETED", exit_code=0) for t in tasks}))
    save_state(plan.layout.state, State(submissions=subs))


def _categories(plan) -> dict[str, list[str]]:
    from hpcffn.jobs.state import load_state
    from hpcffn.jobs.submit import observe

    return {job: [v.category for v in views] for job, views in observe(plan, load_state(plan.layout.state),
                                                                       query=lambda ids: {}).items()}


def _to_run(plan, resume: bool) -> dict[str, list]:
    from hpcffn.jobs.state import load_state
    from hpcffn.jobs.submit import observe, plan_steps

    views = observe(plan, load_state(plan.layout.state), query=lambda ids: {})
    return {s.job.name: s.tasks for s in plan_steps(plan, views, resume)}


def test_a_new_subvolume_size_makes_every_unit_not_done(tmp_path):
    proc, plan = _planned(tmp_path)
    assert proc.returncode == 0, proc.stderr
    _finish_everything(plan)
    assert all(set(c) == {"done"} for c in _categories(plan).values())
    proc, replanned = _planned(tmp_path, subvolume={"size": [50, 64, 64], "overlap": [8, 8, 8], "groups": 2})
    assert proc.returncode == 0, proc.stderr
    kept = {t.name for t in plan.tiles} & {t.name for t in replanned.tiles}
    assert kept and {g.name for g in plan.groups} == {g.name for g in replanned.groups}  # the same names...
    cats = _categories(replanned)
    assert all("done" not in c for c in cats.values()), cats  # ...but other boxes: nothing of it is done
    assert "re-plan: what these units mean changed" in proc.stdout
    assert set(_to_run(replanned, resume=False)) == {j.name for j in replanned.jobs}
    for stage in ("partitions", "infer", "joins"):
        assert not any(replanned.layout.marker(stage, t).exists() for t in kept)


def test_changed_stitch_parameters_redo_the_stitch_and_evaluation_only(tmp_path):
    _, plan = _planned(tmp_path)
    _finish_everything(plan)
    proc, replanned = _planned(tmp_path, ffn={"stitch": {"min_overlap_voxels": 7}})
    assert proc.returncode == 0, proc.stderr
    cats = _categories(replanned)
    redo = {j.name for j in replanned.jobs if j.stage in ("joins", "resolve", "relabel", "pyramid", "evaluate")}
    for job, c in cats.items():
        assert set(c) == ({"never"} if job in redo else {"done"}), (job, c)
    assert set(_to_run(replanned, resume=False)) == redo


def test_changed_consensus_settings_redo_consensus_and_stitch_not_the_passes(tmp_path):
    _, plan = _planned(tmp_path, ffn={"inference": {"consensus": {"split_min_size": 1000}}})
    _finish_everything(plan)
    proc, replanned = _planned(tmp_path, ffn={"inference": {"consensus": {"split_min_size": 10}}})
    assert proc.returncode == 0, proc.stderr
    redo = {j.name for j in replanned.jobs
            if j.stage in ("consensus", "joins", "resolve", "relabel", "pyramid", "evaluate")}
    assert {j.stage for j in replanned.jobs} >= {"infer", "reverse", "consensus"}
    for job, c in _categories(replanned).items():
        assert set(c) == ({"never"} if job in redo else {"done"}), (job, c)


def test_an_unchanged_replan_keeps_everything_done_and_the_same_plan(tmp_path):
    _, plan = _planned(tmp_path)
    _finish_everything(plan)
    before = (tmp_path / "work" / "plan.json").read_bytes()
    proc, replanned = _planned(tmp_path)
    assert proc.returncode == 0 and "re-plan" not in proc.stdout
    assert (tmp_path / "work" / "plan.json").read_bytes() == before
    assert all(set(c) == {"done"} for c in _categories(replanned).values())
    assert _to_run(replanned, resume=True) == {}


def test_a_replan_changing_work_a_local_run_holds_is_refused(tmp_path):
    from hpcffn.jobs.state import locked

    _, plan = _planned(tmp_path)
    before = (tmp_path / "work" / "plan.json").read_bytes()
    with locked(plan.layout.state):  # what `hpcffn run` holds while it runs
        proc, _ = _planned(tmp_path, ffn={"inference": {"min_segment_size": 50}})
        assert_one_line_error(proc, "`hpcffn run` (or submit) is working in", "infer")
        assert (tmp_path / "work" / "plan.json").read_bytes() == before
        proc, _ = _planned(tmp_path)  # the same plan again: nothing it runs changes
        assert proc.returncode == 0, proc.stderr


def test_a_replan_changing_queued_work_is_refused(tmp_path):
    from hpcffn.jobs import slurm
    from hpcffn.jobs.replan import changed_units, refuse_work_in_progress
    from hpcffn.jobs.state import State, Submission, save_state
    from hpcffn.plan.fingerprints import unit_fingerprints
    from hpcffn.plan.planner import make_plan

    _, plan = _planned(tmp_path)
    infer = next(j for j in plan.jobs if j.stage == "infer")
    save_state(plan.layout.state, State(submissions=[Submission(
        job=infer.name, job_id="77", submitted="t", sha256="x", tasks=list(range(len(infer.units))),
        units={str(i): u for i, u in enumerate(infer.units)})]))
    spec = tmp_path / "exp.yaml"
    spec.write_text(spec.read_text().replace("depth: 2", "depth: 2\n    features: 16"))
    new = make_plan(spec).plan
    changed = changed_units(new, unit_fingerprints(new))
    running = lambda ids: {i: slurm.TaskInfo(id=i, state="RUNNING") for i in ids}
    with pytest.raises(HpcffnError, match=f"jobs {infer.name} are still pending or running"):
        refuse_work_in_progress(new, changed, query=running)
    refuse_work_in_progress(new, changed, query=lambda ids: {i: slurm.TaskInfo(id=i, state="COMPLETED") for i in ids})


@pytest.mark.parametrize("marker_too", [False, True])
def test_a_deleted_output_makes_its_unit_not_done(tmp_path, marker_too):
    from hpcffn.jobs.status import collect

    _, plan = _planned(tmp_path)
    _finish_everything(plan)
    tile = plan.tiles[1].name
    infer = next(j for j in plan.jobs if j.stage == "infer" and tile in j.units)
    plan.layout.segmentation(tile).unlink()
    if marker_too:
        plan.layout.marker("infer", tile).unlink()
    cats = _categories(plan)
    assert cats[infer.name][infer.units.index(tile)] == "missing"
    for resume in (False, True):  # run, run --resume and submit --resume
        assert _to_run(plan, resume) == {infer.name: [infer.units.index(tile)]}
    row = next(r for r in collect(plan).rows if r.job == infer.name)
    assert row.states.get("OUTPUT MISSING") == 1 and row.counts["done"] == len(infer.units) - 1


def test_a_task_marks_nothing_done_when_the_plan_changed_while_it_ran(tmp_path):
    from hpcffn.core.units import load_task_plan
    from hpcffn.stages.markers import hold_unit, mark_done

    _, plan = _planned(tmp_path)
    infer = next(j for j in plan.jobs if j.stage == "infer")
    task_plan, unit = load_task_plan(plan.layout.plan, infer.name, 0)
    with hold_unit(task_plan, "infer", unit):
        _planned(tmp_path, ffn={"inference": {"min_segment_size": 50}})
        with pytest.raises(HpcffnError, match="changed while infer .* ran"):
            mark_done(task_plan, "infer", unit)
    assert not plan.layout.marker("infer", unit).exists()


def test_a_rewritten_input_makes_its_volume_not_done(tmp_path):
    import os

    _, plan = _planned(tmp_path)
    _finish_everything(plan)
    raw = tmp_path / "data" / "v1.h5"
    st = raw.stat()
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the data was copied again
    proc, replanned = _planned(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all("done" not in c for c in _categories(replanned).values())


# ------------------------------------------------------------------ item 3: a plan is switched as one


def _replan_interrupted(tmp_path, monkeypatch, where: str):
    """Plan, then re-plan with other tiles, stopped (as by kill -9) at `where`; the old plan."""
    import os

    from hpcffn.core import units
    from hpcffn.plan.planner import make_plan
    from hpcffn.plan.render import write_workdir

    proc, old = _planned(tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec = tmp_path / "exp.yaml"
    spec.write_text(spec.read_text().replace("- 64\n  - 64\n  - 64", "- 50\n  - 64\n  - 64", 1))
    new = make_plan(spec)
    if where == "units":  # after the head and the first unit index
        calls, write = [], units.atomic_write_text

        def dying(path, text, mode=None):
            calls.append(path)
            if len(calls) == 3:
                raise KeyboardInterrupt
            write(path, text, mode)
        monkeypatch.setattr(units, "atomic_write_text", dying)
    else:  # as plan.json is renamed into place
        replace = os.replace

        def dying(src, dst, *a, **k):
            if str(dst).endswith("plan.json"):
                raise KeyboardInterrupt
            return replace(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(KeyboardInterrupt):
        write_workdir(new.plan, new.scripts, new.resolved_yaml, force=False, dry_run=False)
    monkeypatch.undo()
    return old


def test_a_plan_killed_while_writing_units_leaves_the_old_plan_whole(tmp_path, monkeypatch):
    from hpcffn.core.plan_model import load_plan
    from hpcffn.core.units import load_task_plan

    old = _replan_interrupted(tmp_path, monkeypatch, "units")
    assert load_plan(tmp_path / "work").tiles == old.tiles
    for i, tile in enumerate(t for t in old.tiles if t.group):
        task_plan, unit = load_task_plan(old.layout.plan, "partitions", i)
        assert unit == tile.name and task_plan.tile(unit) == tile
    assert not list((tmp_path / "work").glob(".units.*"))


def test_a_plan_killed_before_plan_json_is_refused_by_tasks(tmp_path, monkeypatch):
    from hpcffn.core.units import load_task_plan

    old = _replan_interrupted(tmp_path, monkeypatch, "plan.json")
    with pytest.raises(HpcffnError, match="come from different `hpcffn plan` runs"):
        load_task_plan(old.layout.plan, "partitions", 0)
    proc = hpcffn("stage", "partitions", "--plan", old.layout.plan, "--job", "partitions", "--tile", "0")
    assert_one_line_error(proc, "come from different `hpcffn plan` runs", "run `hpcffn plan` again")
    assert hpcffn("plan", tmp_path / "exp.yaml").returncode == 0  # planning again puts it right
    task_plan, unit = load_task_plan(old.layout.plan, "partitions", 0)
    assert task_plan.tile(unit).box.size[0] == 50


def test_a_tile_of_a_task_of_several_tiles_is_done_only_for_the_plan_it_was_made_for(tmp_path):
    # tiles_per_task > 1: a task skips its tiles whose markers say done; those markers must certify
    # the tiles' meaning, or a re-plan with new inference settings would keep their old results.
    from hpcffn.stages.markers import is_done, mark_done

    _, plan = _planned(tmp_path, ffn={"inference": {"tiles_per_task": 2}})
    tiles = [t.name for t in plan.tiles]
    for t in tiles:
        mark_done(plan, "infer", t)
    assert all(is_done(plan, "infer", t) for t in tiles)
    _, same = _planned(tmp_path, ffn={"inference": {"tiles_per_task": 2}})
    assert all(is_done(same, "infer", t) for t in tiles)
    proc, changed = _planned(tmp_path, ffn={"inference": {"tiles_per_task": 2, "segment_threshold": 0.7}})
    assert proc.returncode == 0, proc.stderr
    assert not any(is_done(changed, "infer", t) for t in tiles)
