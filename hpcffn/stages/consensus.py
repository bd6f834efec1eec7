"""Stage step consensus: FFN's split consensus of a tile's forward and reverse inference passes.

`consensus_files` is the standalone entry (`hpcffn stage consensus --a FWD.h5 --b REV.h5
--output C.h5`); the plan entry (an array over tiles, with ffn.inference.consensus) reads the
tile's infer/forward/ and infer/reverse/ outputs and writes infer/<tile>.h5, which joins,
stitch and evaluate read. The output keeps `a`'s offset and the origins of the segments that
keep their forward id (FFN's compute_consensus does the same); new pieces have no origin.
The rules are in hpcffn/ffn/consensus.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import INFERENCE_PASSES


def _open(path: Path, what: str):
    import h5py

    if not Path(path).is_file():
        raise HpcffnError(f"--{what} {path} does not exist: give an infer output (dataset seg)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise HpcffnError(f"--{what} {path} is not a readable HDF5 file ({exc})") from None
    if "seg" not in f:
        f.close()
        raise HpcffnError(f"--{what} {path} has no dataset seg: give an infer output")
    return f


def consensus_files(a: str | Path, b: str | Path, output: str | Path, split_min_size: int = 1000,
                    overwrite: bool = False, log=print, small_pieces: str = "drop") -> dict:
    """Split consensus of segmentation file `a` by `b` (same box) into `output`, written atomically."""
    from hpcffn.ffn.consensus import apply_labels, count_pairs, split_labels
    from hpcffn.io import origins as origin_table
    from hpcffn.io.volumes import atomic_h5, dataset_offset

    output = Path(output)
    if output.exists() and not overwrite:
        raise HpcffnError(f"output {output} already exists: remove it, choose another --output, or pass --overwrite")
    if split_min_size < 0:
        raise HpcffnError(f"--split-min-size {split_min_size}: give 0 or more voxels")
    with _open(a, "a") as fa, _open(b, "b") as fb:
        sa, sb = fa["seg"], fb["seg"]
        if sa.shape != sb.shape or dataset_offset(sa) != dataset_offset(sb):
            raise HpcffnError(f"{a} (shape {sa.shape}, offset {dataset_offset(sa)}) and {b} (shape {sb.shape}, "
                              f"offset {dataset_offset(sb)}) are not segmentations of the same box: give two passes "
                              "over the same box")
        table = split_labels(*count_pairs(sa, sb), split_min_size, small_pieces)
        origins = origin_table.read(fa)
        kept = set(table.kept.tolist())
        with atomic_h5(output) as f:
            out = f.create_dataset("seg", sa.shape, np.uint64, compression="gzip", compression_opts=1,
                                   chunks=True)
            apply_labels(table, sa, sb, out)
            f.attrs["offset"] = out.attrs["offset"] = np.asarray(dataset_offset(sa), np.int64)
            f.attrs.update(segments=table.segments, split_min_size=split_min_size, small_pieces=small_pieces,
                           consensus_of=[str(a), str(b)])
            if origins is not None:
                origin_table.write(f, {i: o for i, o in origins.items() if i in kept})
    split = int(np.count_nonzero((table.label > 0) & (table.label != table.a)))
    log(f"hpcffn consensus: {len(np.unique(table.a[table.a > 0]))} forward segments -> {table.segments} "
        f"({split} new pieces) -> {output}")
    return {"segments": table.segments, "new_pieces": split}


def run_from_plan(plan: Plan, tile_key: str, log=print) -> dict:
    """The consensus of one planned tile's two passes into the tile's segmentation; marker when done."""
    from hpcffn.stages.markers import hold_unit, mark_done

    params = plan.ffn.inference.consensus
    if params is None:
        raise HpcffnError(f"the plan of {plan.spec_file} has no ffn.inference.consensus: set it and re-plan")
    tile = plan.tile(plan.task_unit("consensus", tile_key))
    output = plan.infer_output("consensus", tile.name)
    passes = [plan.infer_output(stage, tile.name) for stage in INFERENCE_PASSES]
    for path in passes:
        if not path.is_file():
            raise HpcffnError(f"consensus of tile {tile.name} needs {path}: run the tile's infer and reverse jobs "
                              "first (hpcffn submit --resume runs what is missing)")
    with hold_unit(plan, "consensus", tile.name, (output,)):
        found = consensus_files(*passes, output, params.split_min_size, overwrite=True, log=log,
                                small_pieces=params.small_pieces)
        mark_done(plan, "consensus", tile.name, **found)
    return found
