"""What docs/guarantees.md promises: one writer per unit, inputs never written, no stale
temporaries, one plan at a time, signals caught from the start, whole names only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml
from plan_helpers import spec_dict, write_h5, write_spec
from test_data_stages_plan import make_plan as make_data_plan
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.core.errors import HpcffnError
from hpcffn.core.locks import exclusive
from hpcffn.plan.planner import make_plan
from hpcffn.stages import convert, coordinates, partitions
from hpcffn.stages.markers import hold_unit

# ------------------------------------------------------------------ 1. one writer per unit

def test_a_second_writer_of_a_unit_is_refused_naming_the_holder(tmp_path, monkeypatch):
    plan, _, _ = make_data_plan(tmp_path)
    convert.run_from_plan(plan, "v", progress=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with hold_unit(plan, "partitions", "v_z0_y0_x0"):
        proc = hpcffn("stage", "partitions", "--plan", plan.layout.plan, "--tile", "v_z0_y0_x0")
        assert_one_line_error(proc, "partitions v_z0_y0_x0", f"host {socket.gethostname()}",
                              f"pid {os.getpid()}", "SLURM job 4242")
        assert not plan.layout.partitions("v_z0_y0_x0").exists()
        # Another unit of the same stage is free.
        assert hpcffn("stage", "partitions", "--plan", plan.layout.plan, "--tile", "v_z0_y0_x1").returncode == 0
    # Released with the block: the unit runs now.
    assert hpcffn("stage", "partitions", "--plan", plan.layout.plan, "--tile", "v_z0_y0_x0").returncode == 0


@pytest.mark.parametrize("stage,unit", [("train", "g0"), ("infer", "v_z0_y0_x0"), ("stitch", "v"),
                                        ("coordinates", "g0"), ("convert", "v")])
def test_every_writing_stage_takes_its_units_lock(tmp_path, stage, unit):
    """Each stage's plan entry refuses while its unit is held (before reading any input)."""
    from hpcffn.stages import infer, stitch, train

    plan, _, _ = make_data_plan(tmp_path)
    convert.run_from_plan(plan, "v", progress=False)
    for t in plan.tiles:
        partitions.run_from_plan(plan, t.name)
    coordinates.run_from_plan(plan, "g0", progress=False)
    for t in plan.tiles:  # stitch needs the tiles' segmentations to exist
        from hpcffn.stages.infer import write_segmentation

        write_segmentation(plan.layout.segmentation(t.name), np.zeros(t.infer_box.size, np.uint64), t.infer_box.start)
    run = {"train": lambda: train.run_from_plan(plan, "g0"), "infer": lambda: infer.run_from_plan(plan, unit),
           "stitch": lambda: stitch.run_from_plan(plan, "v"),
           "coordinates": lambda: coordinates.run_from_plan(plan, "g0", progress=False),
           "convert": lambda: convert.run_from_plan(plan, "v", progress=False)}[stage]
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from hpcffn.core.plan_model import load_plan\n"
        "from hpcffn.stages.markers import hold_unit\n"
        f"with hold_unit(load_plan({str(plan.layout.plan)!r}), {stage!r}, {unit!r}):\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(HpcffnError, match=rf"{stage} {unit} of .* another run \(host .*pid {child.pid}"):
            run()
    finally:
        child.kill()
        child.wait()


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    lock = tmp_path / "u.lock"
    child = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom hpcffn.core.locks import exclusive\n"
        f"with exclusive({str(lock)!r}, 'u', 'wait'):\n    print('held', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(HpcffnError, match="u is being written by another run"), exclusive(lock, "u", "wait"):
        pass
    child.kill()
    child.wait()
    with exclusive(lock, "u", "wait"):  # kill -9 leaves the file, never the lock
        pass


def test_killing_the_local_runner_ends_its_tasks(job_tmp):
    """kill -9 of `hpcffn run` must not leave a task writing beside the one a resume starts."""
    from conftest import build_mini_plan
    from test_jobs_local import HPCFFN, _patch_partitions

    plan = build_mini_plan(job_tmp / "work", throttle=None)
    _patch_partitions(plan, 'echo $$ > "pid_$unit"; sleep 120\n')
    root = plan.layout.root
    runner = subprocess.Popen([*HPCFFN, "run", str(root), "--no-progress", "--stage", "partitions"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(root.glob("pid_*")):
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in root.glob("pid_*") if p.read_text().strip()]
        assert pids
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids)
    finally:
        if runner.poll() is None:
            runner.kill()
        for p in root.glob("pid_*"):
            try:
                os.kill(int(p.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ 2. inputs never written

def test_plan_refuses_an_input_in_the_file_convert_writes(tmp_path):
    spec = spec_dict(volumes=[{"name": "v", "raw": "work/data/v.h5:raw", "groundtruth": "work/data/v.h5:stack",
                               "polarity": "white"}])
    path = write_spec(tmp_path, spec, data=False)
    write_h5(tmp_path / "work" / "data" / "v.h5", datasets=("raw", "stack", "my_annotations"))
    assert_one_line_error(hpcffn("plan", path), "volumes.0.raw", "convert writes", "move your input")
    with h5py.File(tmp_path / "work" / "data" / "v.h5") as fh:
        assert set(fh) == {"raw", "stack", "my_annotations"}


# ------------------------------------------------------------------ 5. whole names only

@pytest.mark.parametrize("where", ["name", "volume"])
def test_names_with_a_trailing_newline_are_refused(tmp_path, where):
    spec = spec_dict()
    if where == "name":
        spec["name"] = "tiny\n"
    else:
        spec["volumes"][0]["name"] = "blobs\n"
    path = write_spec(tmp_path, spec)
    proc = hpcffn("validate", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------ 6. stale temporaries

def test_the_next_run_of_a_unit_removes_what_a_killed_run_left(tmp_path):
    plan, _, _ = make_data_plan(tmp_path)
    target = plan.layout.converted_volume("v")
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.k2j_x9ab.tmp.h5"
    other = target.parent / ".w.h5.k2j_x9ab.tmp.h5"  # another volume's: not this unit's
    stale.write_bytes(b"x" * 1000)
    other.write_bytes(b"x")
    convert.run_from_plan(plan, "v", progress=False)
    assert not stale.exists() and other.exists()
    for t in plan.tiles:
        partitions.run_from_plan(plan, t.name)
    out = plan.layout.coordinates("g0")
    out.parent.mkdir(parents=True, exist_ok=True)
    shards = out.parent / f"{coordinates.shard_prefix(out)}abc123"
    shards.mkdir()
    (shards / "shard00000.u64").write_bytes(b"0" * 80)
    tmp_rec = out.parent / f".{out.name}.abcdefgh.tmp.tfrecord.gz"
    tmp_rec.write_bytes(b"x")
    coordinates.run_from_plan(plan, "g0", progress=False)
    assert not shards.exists() and not tmp_rec.exists() and out.is_file()


# ------------------------------------------------------------------ 7. one plan at a time

def test_plan_refuses_while_another_plan_writes_the_workdir(tmp_path):
    path = write_spec(tmp_path)
    assert hpcffn("plan", path).returncode == 0
    planned = make_plan(path)
    with exclusive(planned.plan.layout.plan_lock, "x", "y"):
        assert_one_line_error(hpcffn("plan", path), "the plan of", "another run", f"pid {os.getpid()}")
        assert hpcffn("plan", path, "--dry-run").returncode == 0  # writes nothing, needs no lock
    assert hpcffn("plan", path).returncode == 0


# ------------------------------------------------------------------ 11. SLURM down: short waits, said plainly

def _fake_tools(folder, tools: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in tools.items():
        path = folder / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _submitted(plan, ids):
    from hpcffn.jobs.state import State, Submission, save_state

    subs = [Submission(job=j.name, job_id=jid, submitted="t", sha256="x",
                       tasks=list(range(len(j.units))) if j.array else None) for j, jid in zip(plan.jobs, ids)]
    save_state(plan.layout.state, State(submissions=subs))


def test_status_with_a_hanging_scheduler_answers_quickly_and_says_so(mini_plan, tmp_path):
    _submitted(mini_plan, [str(100 + i) for i in range(len(mini_plan.jobs))])
    hang = "sleep 300"
    path = _fake_tools(tmp_path / "bin", {"squeue": hang, "sacct": hang, "scontrol": hang, "sbatch": hang})
    env = {**os.environ, "PATH": path, "HPCFFN_SLURM_TIMEOUT": "2"}
    start = time.monotonic()
    proc = subprocess.run(["hpcffn", "status", str(mini_plan.layout.root)], capture_output=True, text=True,
                          env=env, timeout=100, check=False)
    assert time.monotonic() - start < 30, "a hanging scheduler must not hold status for minutes"
    assert proc.returncode == 0, proc.stderr
    assert "SLURM did not answer" in proc.stdout + proc.stderr and "did not answer within 2 s" in proc.stdout + proc.stderr


def test_status_says_when_only_accounting_answered(mini_plan, tmp_path, monkeypatch):
    from hpcffn.jobs.status import collect

    _submitted(mini_plan, ["100"])
    path = _fake_tools(tmp_path / "bin", {
        "squeue": 'echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2; exit 1',
        "sacct": 'echo "100|RUNNING|0:0|None"',
        "scontrol": 'echo "scontrol: error: Unable to contact slurm controller" >&2; exit 1'})
    monkeypatch.setenv("PATH", path)
    report = collect(mini_plan)
    assert any("scheduler did not answer `squeue`" in w for w in report.warnings), report.warnings


# ------------------------------------------------------------------ 12. all-or-nothing submit

def test_submit_queues_nothing_when_sbatch_would_refuse_any_script(mini_plan, tmp_path, monkeypatch):
    from hpcffn.jobs.state import load_state
    from hpcffn.jobs.submit import submit

    script = mini_plan.layout.root / mini_plan.job("train_g0").script
    script.write_text(script.read_text().replace("#SBATCH", "#SBATCH --partition=bogus\n#SBATCH", 1))
    log = tmp_path / "queued"
    path = _fake_tools(tmp_path / "bin", {"sbatch": f"""script="${{@: -1}}"
if grep -q "partition=bogus" "$script"; then echo "sbatch: error: invalid partition specified: bogus" >&2; exit 1; fi
for a in "$@"; do [ "$a" = "--test-only" ] && {{ echo "sbatch: Job 1 to start at now" >&2; exit 0; }}; done
echo "$script" >> {log}; wc -l < {log}"""})
    monkeypatch.setenv("PATH", path)
    with pytest.raises(HpcffnError, match=r"nothing was submitted: .*train_g0 \(sbatch: error: invalid partition"):
        submit(mini_plan, echo=lambda *_: None)
    assert not log.exists() and not load_state(mini_plan.layout.state).submissions
    script.write_text(script.read_text().replace("#SBATCH --partition=bogus\n", "", 1))
    assert len(submit(mini_plan, echo=lambda *_: None)) == len(mini_plan.jobs)
    assert len(log.read_text().splitlines()) == len(mini_plan.jobs)


# ------------------------------------------------------------------ 4. no silent wrong input

def _spec_with_h5(tmp_path, raw, stack, polarity=None):
    path = write_spec(tmp_path, data=False)
    (tmp_path / "data").mkdir(exist_ok=True)
    with h5py.File(tmp_path / "data" / "v1.h5", "w") as fh:
        fh["raw"], fh["stack"] = raw, stack
    if polarity:
        spec = yaml.safe_load(path.read_text())
        spec["volumes"][0]["polarity"] = polarity
        path.write_text(yaml.safe_dump(spec))
    return path


SHAPE = (100, 130, 70)


def _labels():
    stack = np.zeros(SHAPE, np.uint32)
    stack[:, 10:60, 10:40] = 1
    stack[:, 70:120, 20:60] = 2
    return stack


def _gray():
    return np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)


@pytest.mark.parametrize("raw,words", [
    (lambda: _gray().astype(np.float32) / 255, ["float32", "0..1", "rescale minmax"]),
    (lambda: _gray() > 128, ["bool", "not grayscale"]),
    (lambda: (_gray().astype(np.int16) - 128).astype(np.int8), ["int8", "uint8"]),
])
def test_validate_refuses_raw_that_is_not_uint8_grayscale(tmp_path, raw, words):
    assert_one_line_error(hpcffn("validate", _spec_with_h5(tmp_path, raw(), _labels())), "volume v1", *words)


def test_validate_refuses_all_background_groundtruth(tmp_path):
    path = _spec_with_h5(tmp_path, _gray(), np.zeros(SHAPE, np.uint32))
    assert_one_line_error(hpcffn("validate", path), "no object voxels", "background only")


def test_validate_refuses_groundtruth_of_the_wrong_polarity(tmp_path):
    # Black background, white objects, declared as `polarity: white` (dark = object).
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 10:30, 10:30] = 255
    path = _spec_with_h5(tmp_path, _gray(), mask, polarity="white")
    assert_one_line_error(hpcffn("validate", path), "polarity white", "objects cover", "set polarity: black")
    ok = _spec_with_h5(tmp_path / "ok", _gray(), mask, polarity="black")
    proc = hpcffn("validate", ok)
    assert proc.returncode == 0, proc.stderr


def test_convert_refuses_groundtruth_without_objects(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as fh:
        fh["stack"] = np.full((4, 8, 8), 255, np.uint8)
    proc = hpcffn("convert", "--groundtruth", f"{tmp_path}/in.h5:stack", "--polarity", "white",
                  "--output", tmp_path / "out.h5")
    assert_one_line_error(proc, "no object", "all background")
    assert not (tmp_path / "out.h5").exists() and [p.name for p in tmp_path.iterdir()] == ["in.h5"]


# ------------------------------------------------------------------ 9. one line, never a traceback

def test_zero_length_dataset_is_a_one_line_error(tmp_path):
    path = _spec_with_h5(tmp_path, np.zeros((0, 130, 70), np.uint8), np.zeros((0, 130, 70), np.uint32))
    assert_one_line_error(hpcffn("plan", path), "volumes.0.raw", "empty")


def test_truncated_tif_slice_is_a_one_line_error(tmp_path):
    import tifffile

    folder = tmp_path / "raw"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z}.tif", np.full((64, 64), z, np.uint8))
    data = (folder / "s1.tif").read_bytes()
    (folder / "s1.tif").write_bytes(data[:len(data) - 2000])
    proc = hpcffn("convert", "--raw", folder, "--output", tmp_path / "out.h5")
    assert_one_line_error(proc, "s1.tif", "truncated or damaged")


@pytest.mark.parametrize("command", [["status"], ["submit", "--dry-run"], ["cancel"], ["run", "--no-progress"]])
@pytest.mark.parametrize("which", ["plan.json", "state.json"])
def test_invalid_utf8_in_plan_or_state_is_a_one_line_error(mini_plan, command, which):
    from hpcffn.jobs.state import State, save_state

    save_state(mini_plan.layout.state, State())
    path = mini_plan.layout.root / which
    path.write_bytes(path.read_bytes()[:-3] + b"\xff\xfe\n")
    proc = hpcffn(command[0], mini_plan.layout.root, *command[1:])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and which in proc.stderr


def test_disk_full_while_converting_is_a_one_line_error(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, check=False).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill the disk")
    try:
        with h5py.File(tmp_path / "in.h5", "w") as fh:
            fh["raw"] = np.random.default_rng(0).integers(0, 256, (40, 256, 256)).astype(np.uint8)
        proc = hpcffn("convert", "--raw", f"{tmp_path}/in.h5:raw", "--output", mnt / "out.h5")
        assert_one_line_error(proc, "no space left", "nothing was replaced")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------ 13. validate says everything wrong, early

def test_validate_reports_every_spec_error(tmp_path):
    spec = spec_dict()
    spec["subvolume"]["bogus"] = 1
    spec["ffn"]["model"]["depth"] = "deep"
    spec["name"] = "bad name"
    proc = hpcffn("validate", write_spec(tmp_path, spec))
    assert_one_line_error(proc, "3 problems", "subvolume.bogus", "ffn.model.depth", "name")


def test_train_time_above_the_profile_limit_is_refused(tmp_path):
    (tmp_path / "site.yaml").write_text('max_time: "5-00:00:00"\ntrain:\n  gpus: 1\n  time: "2-00:00:00"\n')
    spec = spec_dict(cluster={"profile": "site.yaml", "train": {"time": "6-00:00:00"}})
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "cluster.train.time", "6-00:00:00",
                          "profile site.yaml", "max_time 5-00:00:00")
    spec["cluster"]["train"]["time"] = "4-00:00:00"
    proc = hpcffn("validate", write_spec(tmp_path, spec))
    assert proc.returncode == 0, proc.stderr


def test_train_without_gpus_is_refused(tmp_path):
    spec = spec_dict(cluster={"profile": "generic", "train": {"gpus": 0}})
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "cluster.train.gpus", "CPUs")


@pytest.mark.parametrize("odd", ["size", "dtype"])
def test_a_tif_slice_of_another_size_or_dtype_is_found_when_planning(tmp_path, odd):
    import tifffile
    from plan_helpers import write_tif_dir

    folder = write_tif_dir(tmp_path / "raw", shape=(20, 130, 70))
    bad = np.zeros((130, 71), np.uint8) if odd == "size" else np.zeros((130, 70), np.uint16)
    tifffile.imwrite(folder / "s13.tif", bad)
    spec = spec_dict(volumes=[{"name": "v1", "raw": "raw"}])
    spec["subvolume"]["size"] = [16, 64, 64]
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec, data=False)), "s13.tif")


# ------------------------------------------------------------------ 14. YAML alias amplification

def test_yaml_alias_amplification_is_capped(tmp_path):
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 7):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    assert_one_line_error(hpcffn("validate", path), "bomb.yaml", "YAML aliases")
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------ 3. stage flags override the plan or are refused

def test_plan_mode_convert_refuses_a_polarity_flag_it_would_ignore(tmp_path):
    plan, _, _ = make_data_plan(tmp_path)
    proc = hpcffn("stage", "convert", "--plan", plan.layout.plan, "--volume", "v", "--polarity", "black")
    assert_one_line_error(proc, "--polarity", "volumes[].polarity")
    assert not plan.layout.converted_volume("v").exists()


def test_standalone_train_refuses_a_train_dir_in_use(tmp_path):
    train_dir = tmp_path / "t"
    with exclusive(train_dir / ".hpcffn.lock", "x", "y"):
        proc = hpcffn("stage", "train", "--coordinates", tmp_path / "c.tfrecord.gz",
                      "--volume", f"v:{tmp_path}/a.h5:raw:{tmp_path}/a.h5:stack", "--train-dir", train_dir)
        assert_one_line_error(proc, f"train dir {train_dir}", f"pid {os.getpid()}")
