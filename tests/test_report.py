"""`hpcffn report`: the page renders for the tiny example with every stage's outputs, every
picture loads in headless Chromium, and its parts (event files, sacct, colours) read right."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcffn.core.plan_model import load_plan

REPO = Path(__file__).resolve().parents[1]
HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _scalar_writer(train_dir: Path, name_suffix: str = ""):
    """A TensorBoard event file writing scalars as tensors, the way train's tf.summary.write does."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    writer = EventFileWriter(str(train_dir), filename_suffix=name_suffix)

    def add(tag: str, value: float, step: int, wall_time: float):
        meta = summary_pb2.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        tensor = tensor_util.make_tensor_proto(np.float32(value))
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)])
        writer.add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=summary))

    return writer, add


def test_event_files_give_curves_latest_run_wins_and_a_cut_record_ends_the_file(tmp_path):
    from hpcffn.report.events import read_scalars

    first, add = _scalar_writer(tmp_path, ".a")
    for step in (50, 100, 150):
        add("loss", 1.0 / step, step, 1000.0 + step)
    first.close()
    # A requeued run restarts from the step-100 checkpoint: its step 150 replaces the first's.
    second, add = _scalar_writer(tmp_path, ".b")
    add("loss", 0.5, 150, 2000.0)
    add("precision", 0.75, 150, 2000.0)
    second.close()
    curves = read_scalars(tmp_path)
    assert curves["loss"] == [(50, pytest.approx(0.02)), (100, pytest.approx(0.01)), (150, 0.5)]
    assert curves["precision"] == [(150, 0.75)]
    # A job still writing leaves half a record at the end: the complete records still count.
    path = sorted(tmp_path.glob("events.out.tfevents.*"))[1]
    path.write_bytes(path.read_bytes()[:-7])
    curves = read_scalars(tmp_path)
    assert curves["loss"][-1] == (150, 0.5) and "precision" not in curves


def test_sacct_usage_becomes_gpu_hours_per_stage(tmp_path, monkeypatch):
    from hpcffn.report.accounting import gpus_of, parse_usage, stage_usage

    assert gpus_of("billing=4,cpu=4,gres/gpu=2,mem=16G,node=1") == 2
    assert gpus_of("cpu=4,gres/gpu:a100=1,mem=16G") == 1
    assert gpus_of("cpu=4,mem=16G") == 0
    assert parse_usage("12_0|3600|cpu=2,gres/gpu=2\n12_1|1800|cpu=2,gres/gpu=2\nbad|x|y\n") == {
        "12_0": (3600.0, 2), "12_1": (1800.0, 2)}

    workdir = _tiny_workdir(tmp_path)
    plan = load_plan(workdir)
    # No submission: nothing to account.
    assert stage_usage(plan) is None
    from hpcffn.jobs.state import Submission, updating

    def record(job, job_id, local=False):
        sub = Submission(job=job, job_id=job_id, submitted="now", sha256="0", local=local)
        with updating(plan.layout.state) as state:
            state.submissions.append(sub)

    record("train_g0", "40")
    record("infer_g0", "41")
    record("convert", "L1", local=True)
    calls = []

    def fake_sacct(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "40|7200|cpu=8,gres/gpu=4\n41_0|360|cpu=2,gres/gpu=1\n"
                                                   "41_1|1440|cpu=2,gres/gpu=1\n", "")

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/sacct" if name == "sacct" else which(name))
    usage = stage_usage(plan, run=fake_sacct)
    assert "-j" in calls[0] and calls[0][calls[0].index("-j") + 1] == "40,41"  # local L1 is not asked
    assert usage == {"train": {"hours": 2.0, "gpu_hours": 8.0, "runs": 1},
                     "infer": {"hours": pytest.approx(0.5), "gpu_hours": pytest.approx(0.5), "runs": 2}}


def test_random_colours_keep_an_ids_colour_and_background_black():
    from hpcffn.report.figures import random_colours

    a = random_colours(np.array([[0, 5], [7, 5]], dtype=np.uint64))
    b = random_colours(np.array([[7, 9]], dtype=np.uint64))
    assert (a[0, 0] == 0).all() and (a[0, 1] == a[1, 1]).all()
    assert (a[1, 0] == b[0, 0]).all() and not (a[0, 1] == a[1, 0]).all()
    assert a.min() >= 0 and a.max() <= 1


# ------------------------------------------------------------------ the tiny example's page
def _tiny_workdir(tmp_path: Path) -> Path:
    src = REPO / "examples" / "tiny"
    dst = tmp_path / "tiny"
    dst.mkdir()
    shutil.copy(src / "tiny.yaml", dst)
    subprocess.run([sys.executable, str(src / "make_data.py"), "--out", str(dst / "data")], check=True,
                   capture_output=True)
    proc = subprocess.run([*HPCFFN, "plan", str(dst / "tiny.yaml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return dst / "work"


def _run_stages_around_a_made_up_segmentation(workdir: Path) -> None:
    """What the tiny example leaves behind, with the network replaced: convert, stitch and
    evaluate are the real stages; each tile's segmentation is its groundtruth with two
    objects merged (so the metrics are not all perfect); training wrote event files."""
    pytest.importorskip("scipy")
    from hpcffn.stages import convert, evaluate, joins, pyramid, relabel, resolve
    from hpcffn.stages.markers import mark_done

    plan = load_plan(workdir)
    convert.run_from_plan(plan, "blobs", progress=False)
    with h5py.File(plan.layout.converted_volume("blobs"), "r") as f:
        gt = f["stack"][...]
    for i, tile in enumerate(plan.tiles):
        seg = gt[tile.infer_box.slices].astype(np.uint64)
        ids = np.unique(seg[seg > 0])
        if len(ids) >= 2:
            seg[seg == ids[1]] = ids[0]
        seg[seg > 0] += 1000 * (i + 1)  # tiles number their segments independently
        out = plan.layout.segmentation(tile.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(out, "w") as f:
            f.create_dataset("seg", data=seg).attrs["offset"] = tile.infer_box.start
        mark_done(plan, "infer", tile.name)
    for tile in plan.tiles:
        mark_done(plan, "partitions", tile.name)
    for group in plan.groups:
        plan.layout.train_dir(group.name).mkdir(parents=True)
        writer, add = _scalar_writer(plan.layout.train_dir(group.name))
        for step in range(50, 1001, 50):
            for tag, value in (("loss", 1 / step), ("precision", 0.9), ("recall", 0.8), ("f1", 0.85),
                               ("examples_per_second", 20.0)):
                add(tag, value, step, float(step))
        writer.close()
        mark_done(plan, "coordinates", group.name)
        mark_done(plan, "train", group.name)
    steps = {"joins": joins, "resolve": resolve, "relabel": relabel, "pyramid": pyramid}
    # No network was trained: the joins decide by the overlap's counts alone (resegment off).
    counts_only = {"params": plan.ffn.stitch.model_copy(update={"resegment": False})}
    for job in plan.jobs:  # the planned stitch jobs, as submit would run them
        if job.stage in steps:
            for unit in job.units:
                steps[job.stage].run_from_plan(plan, unit, log=lambda *_: None,
                                               **(counts_only if job.stage == "joins" else {}))
    evaluate.run_from_plan(plan, log=lambda *_: None)


def chromium_dom(html: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after load in headless Chromium (and a screenshot when asked)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--virtual-time-budget=10000"]
    if screenshot is not None:
        proc = subprocess.run([*args, "--window-size=1280,2400", f"--screenshot={screenshot}", html.as_uri()],
                              capture_output=True, text=True, timeout=180, check=False)
        assert screenshot.is_file(), proc.stderr[-2000:]
    proc = subprocess.run([*args, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_tiny_example_report_renders_and_every_picture_loads_in_chromium(tmp_path):
    workdir = _tiny_workdir(tmp_path)
    _run_stages_around_a_made_up_segmentation(workdir)
    proc = subprocess.run([*HPCFFN, "report", str(workdir)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # The readable table, the sentence on reading it, and where the page is.
    assert re.search(r"(?m)^tile\s+ARE\s+precision\s+recall\s+VI split\s+VI merge", out), out
    for row in ("blobs_z0_y0_x0", "[g0]", "[g1]", "[blobs]", "[overall]", "[blobs stitched]"):
        assert re.search(rf"(?m)^{re.escape(row)}\s+\d\.\d{{4}}", out), (row, out)
    assert "VI merge when separate objects are joined" in " ".join(out.split())
    html = workdir / "report" / "index.html"
    assert out.strip().splitlines()[-1] == f"report: {html}"
    assert "{" not in out  # a table, not JSON

    pngs = sorted(p.name for p in html.parent.glob("*.png"))
    tiles = [t.name for t in load_plan(workdir).tiles]
    shown = sorted(f"tile_{tiles[i]}.png" for i in (0, 2, 3))  # three tiles spread over the four
    assert pngs == sorted(["stitched_blobs.png", "tiles_blobs.png", "training.png", *shown]), pngs
    text = html.read_text()
    assert text.count('<img src="data:image/png;base64,') == len(pngs)
    assert "No SLURM accounting" in text and "[blobs stitched]" in text

    dom = chromium_dom(html, screenshot=tmp_path / "shot.png")
    assert f'data-images="{len(pngs)}/{len(pngs)}"' in dom, dom[:500]
    # The check can fail: a damaged picture is counted and the page says so.
    broken = html.with_name("broken.html")
    broken.write_text(text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    dom = chromium_dom(broken)
    assert f'data-images="{len(pngs) - 1}/{len(pngs)}"' in dom
    assert re.search(r'id="broken" style="display: block;"', dom)


def test_report_before_any_run_says_what_is_missing(tmp_path):
    workdir = _tiny_workdir(tmp_path)
    proc = subprocess.run([*HPCFFN, "report", str(workdir)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "no evaluation yet" in proc.stdout and "the evaluate stage has not run" in proc.stdout
    text = (workdir / "report" / "index.html").read_text()
    assert "No segmentation yet" in text and "No training curves yet" in text
    assert text.count("<img ") == 1  # the tile grid: every tile not submitted


def test_report_runs_on_a_login_node_without_tensorflow_or_scipy(tmp_path):
    from test_cli_login_node import _base

    workdir = _tiny_workdir(tmp_path)
    proc = _base("report", str(workdir))
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "report" / "index.html").is_file()


def test_report_without_its_extra_names_it(tmp_path):
    workdir = _tiny_workdir(tmp_path)
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'matplotlib':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Block())\nfrom hpcffn.cli import main\n"
            f"sys.argv = ['hpcffn', 'report', {str(workdir)!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("hpcffn: error: this command needs matplotlib, part of the report extra: "
                                   "pip install 'hpcffn[report]'")
