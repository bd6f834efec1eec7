"""Issue 20 (second reliability sweep), the output side: a damaged stitched store is noticed
(readers refuse it, `hpcffn verify` lists it), disk full is one line and never a segfault,
and what a killed resolve left is removed by the next one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_model_stitch import fake_inference, planned  # noqa: F401 (fixture)
from test_model_stitch_volume import stitched  # noqa: F401 (fixture)
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.stages import joins, resolve


def _chunk(plan, level=0):
    store = plan.layout.stitched("v1")
    return store, min(p for p in (store / "labels" / "seg" / str(level)).rglob("*") if p.is_file()
                      and not p.name.startswith("."))


def _readers(plan, tmp_path):
    store = plan.layout.stitched("v1")
    return {"export": hpcffn("export", store, tmp_path / "out.tif"),
            "evaluate": hpcffn("stage", "evaluate", "--plan", plan.layout.plan),
            "report": hpcffn("report", plan.layout.root, "--output", tmp_path / "report")}


# ------------------------------------------------------------------ 10, 15. damaged stitched store

@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_chunk_is_refused_by_every_reader_naming_store_and_chunk(stitched, tmp_path, damage):  # noqa: F811
    store, chunk = _chunk(stitched)
    key = chunk.relative_to(store).as_posix()
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:-5])
    for name, proc in _readers(stitched, tmp_path).items():
        if name == "report" and proc.returncode == 0:
            pytest.fail("report read a damaged store: " + proc.stdout)
        assert_one_line_error(proc, str(store), key, "missing" if damage == "deleted" else "truncated")
    assert not (tmp_path / "out.tif").exists()


def test_verify_says_whole_or_lists_the_damaged_chunks(stitched):  # noqa: F811
    proc = hpcffn("verify", stitched.layout.root)
    assert proc.returncode == 0 and "v1: whole" in proc.stdout, proc.stdout + proc.stderr
    store, chunk = _chunk(stitched)
    chunk.unlink()
    _, other = _chunk(stitched, level=1)
    other.write_bytes(other.read_bytes()[:3])
    proc = hpcffn("verify", stitched.layout.root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{chunk.relative_to(store).as_posix()}: missing" in proc.stdout
    assert f"{other.relative_to(store).as_posix()}: truncated" in proc.stdout
    assert "v1" in proc.stderr and "docs/stitch.md" in proc.stderr


def test_an_unfinished_stitch_is_not_damage_for_verify_or_report(planned, tmp_path):  # noqa: F811
    plan, labels = planned
    fake_inference(plan, labels)
    for job in plan.jobs:  # joins and resolve only: the store exists, no chunk is written yet
        for unit in job.units if job.stage in ("joins", "resolve") else []:
            {"joins": joins, "resolve": resolve}[job.stage].run_from_plan(plan, unit, log=lambda s: None)
    proc = hpcffn("verify", plan.layout.root)
    assert proc.returncode == 0 and "v1: stitch not finished" in proc.stdout, proc.stdout + proc.stderr
    # The report of a running experiment leaves the stitched picture out until relabel is done.
    proc = hpcffn("report", plan.layout.root, "--output", tmp_path / "report", "--tiles", "1")
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "report").glob("tile_*.png")) and not (tmp_path / "report" / "stitched_v1.png").exists()


def test_view_without_the_view_extra_names_it(stitched, tmp_path):  # noqa: F811
    # As on an install without neuroglancer: importing it fails.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "neuroglancer.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'neuroglancer'\", name='neuroglancer')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["hpcffn", "view", str(stitched.layout.root)], capture_output=True, text=True, env=env,
                          check=False, timeout=60)
    assert_one_line_error(proc, "neuroglancer", "hpcffn[view]")


# ------------------------------------------------------------------ 14, 18. disk full

def _small_disk(tmp_path, size="200k"):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                      check=False).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill the disk")
    return mnt


def _fill(mnt, leave_kb: int) -> None:
    (mnt / "fill").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - leave_kb * 1024))


# Runs a stage's own writer through the CLI's error handling, as `hpcffn stage infer` does when it
# saves its progress (TensorFlow is not needed to fill a disk).
_SAVE_STATE = textwrap.dedent("""
    import sys
    import numpy as np
    from hpcffn import cli
    from hpcffn.ffn.inference import save_state

    @cli.app.command("save-state")
    def _save(path: str):
        seg = np.random.default_rng(0).integers(0, 1000, (48, 48, 48)).astype(np.int64)
        save_state(path, seg, np.zeros((52, 3), np.int64), 20, 3, "x")

    sys.argv = ["hpcffn", "save-state", sys.argv[1]]
    cli.main()
""")


@pytest.mark.parametrize("leave_kb", [4, 60])
def test_disk_full_while_saving_inference_progress_is_one_line_never_a_segfault(tmp_path, leave_kb):
    mnt = _small_disk(tmp_path)
    try:
        _fill(mnt, leave_kb)
        proc = subprocess.run([sys.executable, "-c", _SAVE_STATE, str(mnt / "seg.h5.state")], capture_output=True,
                              text=True, check=False, timeout=120)
        assert proc.returncode != -11 and proc.returncode != 139, proc.stderr
        assert_one_line_error(proc, "no space left", "seg.h5.state", str(mnt))
        assert sorted(p.name for p in mnt.iterdir()) == ["fill"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_while_writing_state_json_names_the_file(tmp_path):
    from hpcffn.core.atomic import atomic_write_text
    from hpcffn.core.errors import HpcffnError

    mnt = _small_disk(tmp_path)
    try:
        (mnt / "state.json").write_text("{}\n")
        _fill(mnt, 0)
        with pytest.raises(HpcffnError, match=rf"no space left on the device of {mnt} while writing state.json"):
            atomic_write_text(mnt / "state.json", "x" * 100_000)
        assert (mnt / "state.json").read_text() == "{}\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_while_writing_zarr_chunks_names_the_store_and_chunk(tmp_path):
    from hpcffn.core.errors import HpcffnError
    from hpcffn.io import ome_zarr

    mnt = _small_disk(tmp_path, "400k")
    try:
        store = mnt / "v.ome.zarr"
        ome_zarr.create(store, (64, 64, 64), (32, 32, 32), np.dtype(np.uint32))
        _fill(mnt, 0)
        seg = ome_zarr.open_array(store, "seg", mode="r+")
        noise = np.random.default_rng(0).integers(0, 2**32, (64, 64, 64), dtype=np.uint64).astype(np.uint32)
        with pytest.raises(HpcffnError, match=rf"{store}: cannot write chunk labels/seg/0/\d/\d/\d .*free space"):
            seg[:] = noise
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------ 20. what a killed resolve left

def test_the_next_resolve_removes_what_a_killed_resolve_left(stitched):  # noqa: F811
    plan = stitched
    folder = plan.layout.stitched("v1").parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer running
    left = [folder / ".v1.lut.npy.abcd1234.tmp.npy", folder / ".v1.tiles.json.k2j3h4g5.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    stores = [folder / ".v1.ome.zarr.x7y8z9w0.tmp", folder / f".v1.ome.zarr.old-{dead.pid}"]
    for p in stores:
        (p / "labels").mkdir(parents=True)
    alive = folder / f".v1.ome.zarr.old-{os.getppid()}"  # a live writer's: left alone
    alive.mkdir()
    resolve.run_from_plan(plan, "v1", log=lambda s: None)
    assert not any(p.exists() for p in left + stores)
    assert alive.is_dir()
