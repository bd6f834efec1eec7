"""The whole pipeline on real EM with dense expert groundtruth (FIB-25 ts2_dev), as a lab runs it.

Input is what a lab keeps: a multi-page grayscale TIF and a black-and-white groundtruth TIF
(white background, black objects, white one-voxel boundaries between touching bodies), from
`shared/fib25/ts2_dev/` (FIB-25 training_sample2 from janelia-flyem/neuroproof_examples, CC-BY;
see its README). The true body ids (`ts2_dev.h5:stack`) are only used to score.

    python benchmarks/bench_real_pipeline.py [--data ../shared/fib25/ts2_dev]
        [--box Z0,Y0,X0,DZ,DY,DX] [--train-box Z0,Y0,X0,DZ,DY,DX] [--tiles 2,2,2] [--overlap 32]
        [--steps 100] [--eval-steps 50] [--workdir DIR] [--skip-convert] [--skip-stitch] [--skip-train]
        [--rejoin]

Every stage runs through the project's own CLI on plans made from specs (`hpcffn plan`, then
`hpcffn stage <stage> --plan ...` per task, the commands the job scripts run), each task timed
and its peak memory read from the kernel (wait4). Prints, with targets:

1. groundtruth conversion of the whole white TIF against `stack`, with 6- and 26-connectivity:
   VI split/merge, bodies on both sides, and the bodies lost (each must be no thicker than a
   boundary: largest inscribed distance <= 1 voxel);
2. tiling and stitching: --box cut into --tiles tiles (inference-only plan, `checkpoint:
   fib25`, overlap --overlap) against one untiled segmentation of the box with the same weights,
   both scored against `stack` on the box's inner region (16 voxels of context kept out on every
   side). Target: stitching costs <= 2% VI and <= 0.005 adapted Rand error. The same tile
   segmentations are then joined again under each `ffn.stitch.fraction_of` rule, without
   fill_gaps, and with resegment (its fills are the only new inference);
3. training on real data: FFN's training metrics (precision, recall, accuracy over the FOV, the
   counts FFN's trainer logs) on hpcffn's own training examples of --train-box, for the fib25
   weights, a model trained from scratch for --steps steps, and a fine-tune from fib25 of --steps
   steps (the lab's plan: convert, partitions, coordinates, train); then the fine-tuned model's
   untiled segmentation of --box scored as in 2: target no worse than fib25's (VI within 2%,
   ARE within 0.005). --train-box overlaps --box: a check that fine-tuning does no harm, not
   of generalisation;
4. wall time and peak memory of every stage task.

Skips with a message (exit 0) when the data is absent. CPU: inference runs ~2-4 FOV/s on 2 free
cores, so the defaults are small (--box 64x80x80, --train-box 84x96x96: training cuts examples
of FOV + 2 x margin = 81 per axis); give larger boxes (e.g. --box 0,0,0,118,250,250) on a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter of the in-process parts

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 16  # voxels kept out of scoring on every side: one FOV radius of image context
TARGET_VI_COST, TARGET_ARE_COST = 0.02, 0.005
TIMES: list[tuple[str, float, float]] = []  # (task, wall s, peak RSS GB)


# The child reports its own peak (VmHWM, reset by exec): the kernel's ru_maxrss of a forked
# child starts at the parent's size, which would charge every task with the benchmark's memory.
WRAP = """import atexit, runpy, sys
def _hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            print('BENCH_VMHWM_KB', line.split()[1], file=sys.stderr, flush=True)
atexit.register(_hwm)
sys.argv = ['hpcffn'] + sys.argv[1:]
runpy.run_module('hpcffn.cli', run_name='__main__')
"""


def run_measured(label: str, args: list[str], cwd=None) -> str:
    """Run one hpcffn command; record its wall time and peak resident memory."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, *map(str, args)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    peak = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("BENCH_VMHWM_KB")]
    TIMES.append((label, time.perf_counter() - t0, peak[-1] / 1e6 if peak else float("nan")))
    if proc.returncode != 0:
        raise SystemExit(f"{label}: `hpcffn {' '.join(map(str, args))}` exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return proc.stdout


def run_plan(spec: Path, label: str) -> object:
    """`hpcffn plan`, then every task of every job in plan order, as the job scripts would."""
    from hpcffn.core.plan_model import Plan

    run_measured(f"{label} plan", ["plan", spec])
    workdir = spec.parent / "work"
    plan = Plan.model_validate_json((workdir / "plan.json").read_text())
    run_jobs(plan, workdir, label)
    return plan


def run_jobs(plan, workdir: Path, label: str, stages=None) -> None:
    """Every task of the plan's jobs (or of those of `stages`) in plan order, as the job scripts would."""
    for job in plan.jobs:
        if stages is not None and job.stage not in stages:
            continue
        for i, unit in enumerate(job.units):
            s = job.stage
            args = ["stage", s, "--plan", workdir]
            if s in ("convert", "resolve"):
                args += ["--volume", i]
            elif s in ("partitions", "infer"):
                args += ["--job", job.name, "--tile", i]
            elif s in ("joins", "relabel"):
                args += ["--tile", i]
            elif s in ("coordinates", "train"):
                args += ["--group", unit]
            elif s == "pyramid":
                args += ["--job", job.name, "--block", i]
            run_measured(f"{label} {s} {unit}", args)


def write_spec(folder: Path, raw: Path, gt: Path, size, overlap, stages, ffn) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": folder.name, "workdir": "work",
            "volumes": [{"name": "ts2", "raw": str(raw), "groundtruth": str(gt), "polarity": "white"}],
            "subvolume": {"size": list(size), "overlap": list(overlap), "groups": 1},
            "stages": stages, "ffn": ffn, "cluster": {"profile": "local"}, "container": {"runtime": "none"}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def stitched(plan) -> np.ndarray:
    from hpcffn.io.ome_zarr import open_array

    return np.asarray(open_array(plan.layout.stitched("ts2"), "labels/seg/0")[...])


def inner(a: np.ndarray) -> np.ndarray:
    c = CONTEXT
    return a[c:-c, c:-c, c:-c]


def score(seg: np.ndarray, truth: np.ndarray) -> dict:
    from hpcffn.stages.evaluate import compare

    return compare(inner(seg).astype(np.uint64), inner(truth).astype(np.uint64))


def fmt(m: dict) -> str:
    vi = m["vi_split"] + m["vi_merge"]
    return (f"VI {vi:.4f} (split {m['vi_split']:.4f}, merge {m['vi_merge']:.4f})  ARE {m['adapted_rand_error']:.4f}  "
            f"segments {m['segments']}  bodies {m['objects']}")


# ---------------------------------------------------------------- 1. conversion


def conversion(data: Path, tmp: Path, truth: np.ndarray) -> None:
    import h5py
    from scipy import ndimage

    from hpcffn.stages.evaluate import compare

    print("\n== 1. groundtruth conversion: ts2_dev_gt_white.tif (polarity white) vs the true stack "
          f"({truth.shape[0]}x{truth.shape[1]}x{truth.shape[2]}, whole volume)")
    true_ids = np.unique(truth[truth != 0])
    for conn in (6, 26):
        out = tmp / f"gt_c{conn}.h5"
        run_measured(f"convert groundtruth conn {conn} (whole volume)",
                     ["convert", "--groundtruth", data / "ts2_dev_gt_white.tif", "--polarity", "white",
                      "--connectivity", conn, "--output", out])
        with h5py.File(out) as fh:
            ids = fh["stack"][...]
        # Score where convert made objects (the white boundaries are background by construction).
        m = compare(np.where(ids != 0, ids, 0).astype(np.uint64)[ids != 0], truth[ids != 0].astype(np.uint64))
        kept = np.unique(truth[ids != 0])
        lost = np.setdiff1d(true_ids, kept)
        merged = 0
        a, b = ids[ids != 0], truth[ids != 0]
        pairs = np.unique(np.stack([a, b]), axis=1)
        per_object = np.bincount(np.searchsorted(np.unique(pairs[0]), pairs[0]))
        merged = int((per_object > 1).sum())
        pieces = np.bincount(np.searchsorted(true_ids, pairs[1]))
        split = int((pieces > 1).sum())
        sizes = np.bincount(ids.ravel())[1:]
        small = sizes < 100
        thick = []
        for body in lost:
            zs, ys, xs = np.nonzero(truth == body)
            box = tuple(slice(max(0, v.min() - 1), v.max() + 2) for v in (zs, ys, xs))
            thick.append(float(ndimage.distance_transform_edt(truth[box] == body).max()))
        print(f"  connectivity {conn:2d}: objects {int(ids.max())} vs true bodies {len(true_ids)}; "
              f"VI split {m['vi_split']:.4f} merge {m['vi_merge']:.4f} ARE {m['adapted_rand_error']:.4f} "
              f"(on the {int((ids != 0).sum()):,} object voxels); objects holding >1 body: {merged}; bodies in "
              f">1 object: {split}; objects < 100 voxels: {int(small.sum())} ({sizes[small].sum() / sizes.sum():.2%} of "
              f"the object voxels); "
              f"bodies lost: {len(lost)}"
              + (f" (at most {max(int((truth == b).sum()) for b in lost)} voxels each, max thickness "
                 f"{max(thick):.1f} voxel; target: lost bodies no thicker than a boundary, <= 1.0: "
                 f"{'ok' if max(thick) <= 1.0 else 'MISSED'})" if len(lost) else " (target 0 or only sub-boundary bodies: ok)"))


# ---------------------------------------------------------------- 3. training metrics


def ffn_metrics(checkpoint: str | None, coords: Path, plan, steps: int, train_dir: Path) -> dict:
    """FFN's training counts (tp, fp, fn over the FOV, moves as in training) for fixed weights:
    `steps` training steps at learning rate 1e-12 (SGD, no momentum), so the weights do not change."""
    from hpcffn.core.params import TrainingParams
    from hpcffn.ffn import training
    from hpcffn.stages.train import plan_volumes, train_model

    totals = {"tp": 0.0, "fp": 0.0, "fn": 0.0, "fovs": 0}
    original = training.Trainer._summarize

    def grab(self, writer, iv, step, log):
        for k in totals:
            totals[k] += iv[k]
        return original(self, writer, iv, step, log)

    tp = TrainingParams(batch_size=plan.ffn.training.batch_size, learning_rate=1e-12, optimizer="sgd", momentum=0.0,
                        max_steps=steps, init_checkpoint=checkpoint, seed=7, checkpoint_minutes=1e6)
    training.Trainer._summarize = grab
    try:
        train_model([coords], plan_volumes(plan), plan.ffn.model, tp, train_dir, log=lambda *a: None)
    finally:
        training.Trainer._summarize = original
    fov = np.prod(plan.ffn.model.fov_size)
    voxels = totals["fovs"] * fov
    tp_, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    return {"precision": tp_ / max(tp_ + fp, 1), "recall": tp_ / max(tp_ + fn, 1),
            "accuracy": 1 - (fp + fn) / max(voxels, 1), "fovs": totals["fovs"]}


def train_scratch(coords: Path, plan, steps: int, train_dir: Path) -> None:
    from hpcffn.core.params import TrainingParams
    from hpcffn.stages.train import plan_volumes, train_model

    t0 = time.perf_counter()
    tp = plan.ffn.training.model_copy(update={"init_checkpoint": None, "max_steps": steps})
    train_model([coords], plan_volumes(plan), plan.ffn.model, TrainingParams(**tp.model_dump()), train_dir,
                log=lambda *a: None)
    TIMES.append((f"train from scratch, {steps} steps (in-process)", time.perf_counter() - t0, float("nan")))


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "fib25" / "ts2_dev"))
    ap.add_argument("--box", default="27,85,85,64,80,80",
                    help="z0,y0,x0,dz,dy,dx of the box segmented (tiled, untiled, fine-tuned) and scored")
    ap.add_argument("--train-box", default="17,77,77,84,96,96",
                    help="z0,y0,x0,dz,dy,dx of the box trained on (>= FOV + 2 x margin = 81 per axis)")
    ap.add_argument("--tiles", default="2,2,2", help="tiles per axis z,y,x for the stitching comparison")
    ap.add_argument("--overlap", type=int, default=32, help="inference overlap on every side (voxels; the spec's default)")
    ap.add_argument("--steps", type=int, default=100, help="training steps (fine-tune and scratch)")
    ap.add_argument("--eval-steps", type=int, default=50, help="steps over which FFN's training metrics are counted")
    ap.add_argument("--workdir", default=None, help="keep everything here (default: a temp dir, removed)")
    ap.add_argument("--skip-convert", action="store_true", help="leave out part 1")
    ap.add_argument("--skip-train", action="store_true", help="leave out part 3")
    ap.add_argument("--skip-stitch", action="store_true", help="leave out part 2")
    ap.add_argument("--rejoin", action="store_true",
                    help="part 2 from an earlier run's segmentations in --workdir (same --box, --tiles): no inference; "
                    "the tiled plan's stitch steps and the re-joins run again with this code")
    args = ap.parse_args()
    if args.rejoin and not args.workdir:
        ap.error("--rejoin needs --workdir (an earlier run's, with tiled/ and untiled/)")
    data = Path(args.data)
    if not (data / "ts2_dev.h5").is_file():
        print(f"bench_real_pipeline: skipped: {data}/ts2_dev.h5 not found (FIB-25 ts2_dev lives in ../shared/fib25)")
        return 0
    import h5py
    import tifffile

    z0, y0, x0, dz, dy, dx = map(int, args.box.split(","))
    tiles = tuple(map(int, args.tiles.split(",")))
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench_real_"))
    tmp.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with h5py.File(data / "ts2_dev.h5") as fh:
        truth_all = fh["stack"][...]
    print(f"bench_real_pipeline: FIB-25 ts2_dev {truth_all.shape} from {data}; box z,y,x {z0},{y0},{x0} size "
          f"{dz}x{dy}x{dx}; tiles {tiles}, overlap {args.overlap}; {args.steps} training steps; work in {tmp}")
    if not args.skip_convert:
        conversion(data, tmp, truth_all)

    # The lab's files for the box: cut from the TIFs (as a lab would crop its stacks).
    box = (slice(z0, z0 + dz), slice(y0, y0 + dy), slice(x0, x0 + dx))
    raw_tif, gt_tif = tmp / "box_raw.tif", tmp / "box_gt_white.tif"
    tifffile.imwrite(raw_tif, tifffile.imread(data / "ts2_dev_raw.tif")[box], compression="zlib")
    tifffile.imwrite(gt_tif, tifffile.imread(data / "ts2_dev_gt_white.tif")[box], compression="zlib")
    truth = truth_all[box]
    tz0, ty0, tx0, tdz, tdy, tdx = map(int, args.train_box.split(","))
    tbox = (slice(tz0, tz0 + tdz), slice(ty0, ty0 + tdy), slice(tx0, tx0 + tdx))
    train_raw, train_gt = tmp / "train_raw.tif", tmp / "train_gt_white.tif"
    tifffile.imwrite(train_raw, tifffile.imread(data / "ts2_dev_raw.tif")[tbox], compression="zlib")
    tifffile.imwrite(train_gt, tifffile.imread(data / "ts2_dev_gt_white.tif")[tbox], compression="zlib")
    ffn_infer = {"inference": {"checkpoint": "fib25"}}
    infer_stages = ["convert", "infer", "stitch"]

    whole = None
    if not args.skip_stitch:
        whole = tiling(args, tmp, raw_tif, gt_tif, truth, (dz, dy, dx), tiles, infer_stages, ffn_infer)
    if not args.skip_train:
        training_part(args, tmp, (raw_tif, gt_tif), (train_raw, train_gt, (tdz, tdy, tdx)), truth, (dz, dy, dx),
                      infer_stages, whole)
    print_times(t_all)
    if not args.workdir:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def tiling(args, tmp, raw_tif, gt_tif, truth, shape, tiles, infer_stages, ffn_infer) -> dict:
    dz, dy, dx = shape
    print(f"\n== 2. tiling and stitching: fib25 weights, {tiles[0]}x{tiles[1]}x{tiles[2]} tiles + overlap "
          f"{args.overlap} vs one untiled segmentation; scored on the inner {dz - 2 * CONTEXT}x{dy - 2 * CONTEXT}x"
          f"{dx - 2 * CONTEXT} (16 voxels of context kept out)")
    size = tuple(-(-n // t) for n, t in zip((dz, dy, dx), tiles))
    if args.rejoin:  # an earlier run's segmentations; only the tiled plan's stitch steps run again
        from hpcffn.core.plan_model import load_plan
        from hpcffn.core.stage_table import STITCH_STEPS

        untiled_plan, tiled_plan = load_plan(tmp / "untiled" / "work"), load_plan(tmp / "tiled" / "work")
        run_jobs(tiled_plan, tmp / "tiled" / "work", "tiled", STITCH_STEPS)
    else:
        whole_spec = write_spec(tmp / "untiled", raw_tif, gt_tif, (dz, dy, dx), [args.overlap] * 3, infer_stages,
                                ffn_infer)
        untiled_plan = run_plan(whole_spec, "untiled")
        tiled_spec = write_spec(tmp / "tiled", raw_tif, gt_tif, size, [args.overlap] * 3, infer_stages, ffn_infer)
        tiled_plan = run_plan(tiled_spec, "tiled")
    whole = score(stitched(untiled_plan), truth)
    tiled = score(stitched(tiled_plan), truth)
    print(f"  untiled : {fmt(whole)}")
    rule = tiled_plan.ffn.stitch
    print(f"  stitched: {fmt(tiled)}  ({len(tiled_plan.tiles)} tiles of {size}, join rule {rule.fraction_of}"
          f"{f', resegment r{rule.resegment_radius}' if rule.resegment else ''})")
    print(f"  stitching cost: {cost_text(whole, tiled)}")
    print("  the same tiles joined again under each rule (ffn.stitch: fraction_of min_overlap_fraction, fill_gaps, "
          "resegment):")
    from hpcffn.stages.resegment import judge_of

    base = tiled_plan.ffn.stitch.model_copy(update={"resegment": False})
    for label, update in REJOIN_RULES:
        params = base.model_copy(update=update)
        judge = judge_of(tiled_plan, params, "ts2", log=lambda s: None)
        joined = score(rejoined(tiled_plan, params, tmp / "rejoin.h5", judge), truth)
        print(f"    {label:44s}: {fmt(joined)}  cost: {cost_text(whole, joined)}", flush=True)
        if judge is not None:
            print(f"    {'':44s}  ({judge.summary()})", flush=True)
    ideal = score(ideal_join(tiled_plan, stitched(untiled_plan)), truth)
    print(f"    ideal join (each tile's piece joined as the untiled run labels it): {fmt(ideal)}  "
          f"cost: {cost_text(whole, ideal)}")
    return whole


def ideal_join(plan, untiled: np.ndarray) -> np.ndarray:
    """The tiles' cores, each piece (segment of a tile inside the part it owns) given the untiled
    run's id that covers most of it: what the best join rule could make of these tiles."""
    from hpcffn.io.labeling import pair_counts
    from hpcffn.stages.stitch import plan_tiles, read_box

    out = np.zeros(untiled.shape, np.uint64)
    spare = int(untiled.max()) + 1  # pieces lying on the untiled run's background keep ids of their own
    for t in plan_tiles(plan, "ts2"):
        where = tuple(slice(c, c + n) for c, n in zip(t.core_start, t.core_size))
        core, ref = read_box(t, t.core_start, t.core_size).astype(np.uint64), untiled[where].astype(np.uint64)
        pieces, refs, common = pair_counts(core.ravel(), ref.ravel())
        order = np.lexsort((-common, pieces))  # per piece, the untiled id covering most of it first
        first = order[np.r_[True, pieces[order][1:] != pieces[order][:-1]]]
        lut = np.zeros(int(core.max()) + 1, np.uint64)
        lut[pieces[first]] = refs[first]
        lost = (lut == 0) & np.isin(np.arange(len(lut)), pieces[first])
        lost[0] = False
        lut[lost] = np.arange(spare, spare + lost.sum(), dtype=np.uint64)
        spare += int(lost.sum())
        out[where] = lut[core]
    return out


def cost_text(whole: dict, tiled: dict) -> str:
    """Stitching's cost against the untiled run, with the targets."""
    vi_w, vi_t = whole["vi_split"] + whole["vi_merge"], tiled["vi_split"] + tiled["vi_merge"]
    vi_cost = (vi_t - vi_w) / vi_w
    are_cost = tiled["adapted_rand_error"] - whole["adapted_rand_error"]
    return (f"VI {vi_cost:+.2%} (target <= {TARGET_VI_COST:.0%}: {'ok' if vi_cost <= TARGET_VI_COST else 'MISSED'}), "
            f"ARE {are_cost:+.4f} (target <= {TARGET_ARE_COST}: {'ok' if are_cost <= TARGET_ARE_COST else 'MISSED'})")


# (label, ffn.stitch fields) of the joins the benchmark tries on the same tiles.
REJOIN_RULES = (
    ("larger 0.5, no fill_gaps", {"fraction_of": "larger", "min_overlap_fraction": 0.5, "fill_gaps": False}),
    ("larger 0.5", {"fraction_of": "larger", "min_overlap_fraction": 0.5}),
    ("smaller 0.9", {"fraction_of": "smaller", "min_overlap_fraction": 0.9}),
    ("owner 0.5", {"fraction_of": "owner", "min_overlap_fraction": 0.5}),
    ("resegment r24 (larger 0.5 decides the rest)", {"fraction_of": "larger", "min_overlap_fraction": 0.5,
                                                      "resegment": True, "resegment_radius": 24}),
    ("resegment r40 (larger 0.5 decides the rest)", {"fraction_of": "larger", "min_overlap_fraction": 0.5,
                                                      "resegment": True, "resegment_radius": 40}),
)


def rejoined(plan, params, out: Path, judge=None) -> np.ndarray:
    """The plan's tile segmentations stitched again (single-task stitch) under other ffn.stitch params."""
    import h5py

    from hpcffn.io.volumes import Location
    from hpcffn.stages.stitch import plan_tiles, stitch

    stitch(plan_tiles(plan, "ts2"), plan.volume("ts2").shape, Location(out, "seg"), params, log=lambda s: None,
           judge=judge)
    with h5py.File(out) as f:
        return f["seg"][...]


def training_part(args, tmp, box_tifs, train_box, truth, shape, infer_stages, whole) -> None:
    dz, dy, dx = shape
    raw_tif, gt_tif = box_tifs
    train_raw, train_gt, train_shape = train_box
    print(f"\n== 3. training on real data: the lab's plan (convert, partitions, coordinates, train from fib25, "
          f"{args.steps} steps, --train-box {args.train_box} as one tile); FFN's training metrics over {args.eval_steps} steps of "
          "hpcffn's own examples (weights frozen)")
    ffn_train = {"training": {"init_checkpoint": "fib25", "max_steps": args.steps, "seed": 0}}
    train_spec = write_spec(tmp / "train", train_raw, train_gt, train_shape, [args.overlap] * 3,
                            ["convert", "partitions", "coordinates", "train"], ffn_train)
    tplan = run_plan(train_spec, "lab")
    group = tplan.groups[0].name
    coords = tplan.layout.coordinates(group)
    finetuned = str(tplan.layout.train_dir(group))
    scratch_dir = tmp / "scratch"
    train_scratch(coords, tplan, args.steps, scratch_dir)
    rows = [("fib25 weights", "fib25"), (f"from scratch, {args.steps} steps", str(scratch_dir)),
            (f"fib25 fine-tuned {args.steps} steps", finetuned)]
    for name, ckpt in rows:
        t0 = time.perf_counter()
        m = ffn_metrics(ckpt, coords, tplan, args.eval_steps, tmp / f"eval_{len(TIMES)}")
        TIMES.append((f"metrics of {name} (in-process)", time.perf_counter() - t0, float("nan")))
        print(f"  {name:28s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
              f"accuracy {m['accuracy']:.3f}  ({m['fovs']} FOVs)")
    if whole is None:  # part 2 left out: the fib25 baseline segmentation (an earlier run's in --workdir)
        from hpcffn.core.plan_model import Plan

        done = tmp / "untiled" / "work" / "plan.json"
        if done.is_file() and (tmp / "untiled" / "work" / "stitch" / "ts2.ome.zarr").is_dir():
            whole = score(stitched(Plan.model_validate_json(done.read_text())), truth)
        else:
            spec = write_spec(tmp / "untiled", raw_tif, gt_tif, (dz, dy, dx), [args.overlap] * 3, infer_stages,
                              {"inference": {"checkpoint": "fib25"}})
            whole = score(stitched(run_plan(spec, "untiled")), truth)
    ft_spec = write_spec(tmp / "finetuned", raw_tif, gt_tif, (dz, dy, dx), [args.overlap] * 3, infer_stages,
                         {"inference": {"checkpoint": finetuned}})
    ft = score(stitched(run_plan(ft_spec, "fine-tuned")), truth)
    vi_w, vi_f = whole["vi_split"] + whole["vi_merge"], ft["vi_split"] + ft["vi_merge"]
    worse = (vi_f - vi_w) / vi_w
    print(f"  untiled segmentation of --box, fib25     : {fmt(whole)}")
    print(f"  untiled segmentation of --box, fine-tuned: {fmt(ft)}")
    print(f"  fine-tune changes VI by {worse:+.2%}, ARE by {ft['adapted_rand_error'] - whole['adapted_rand_error']:+.4f} "
          f"(target: not worse, within 2% / 0.005: "
          f"{'ok' if worse <= 0.02 and ft['adapted_rand_error'] - whole['adapted_rand_error'] <= 0.005 else 'MISSED'})")


def print_times(t_all: float) -> None:
    print("\n== 4. wall time and peak memory per task (peak resident memory of the task's process)")
    for label, wall, rss in TIMES:
        print(f"  {label:58s} {wall:8.1f} s  " + ("   -" if math.isnan(rss) else f"{rss:5.2f} GB"))
    print(f"  total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
