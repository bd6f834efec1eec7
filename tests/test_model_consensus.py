"""Split consensus (FFN's split_segmentation_by_intersection): the merge a forward pass made is split
where the reverse pass saw two objects, with FFN's exact id rules. Numpy only, fast."""

from __future__ import annotations

import numpy as np
import pytest

from hpcffn.ffn.consensus import split_consensus


def _loop_reference(a, b, min_size):
    """The rules written as the plain loop over pairs in (b, a) order (the definition, voxel ids)."""
    pairs, counts = np.unique(np.stack([b.ravel(), a.ravel()]), axis=1, return_counts=True)
    best = {}
    for (vb, va), n in zip(pairs.T, counts):
        if va not in best or best[va][1] < n:
            best[va] = (vb, n)
    next_id, out_of = int(a.max()), {}
    for (vb, va), n in zip(pairs.T, counts):
        if n < min_size or va == 0:
            out_of[(va, vb)] = 0
        elif best[va][0] == vb:
            out_of[(va, vb)] = int(va)
        else:
            next_id += 1
            out_of[(va, vb)] = next_id
    return np.vectorize(lambda x, y: out_of[(x, y)], otypes=[np.uint64])(a, b)


def test_a_forward_merge_is_split_by_the_reverse_pass_with_ffns_id_rules():
    a = np.zeros((4, 10, 10), np.uint64)
    b = np.zeros_like(a)
    # the forward pass merged two objects into id 3: 40 voxels on the left, 24 on the right
    a[:, 0:5, 0:2] = 3
    a[:, 0:3, 2:4] = 3
    # the reverse pass saw them as two objects (ids 9 and 4)
    b[:, 0:5, 0:2] = 9
    b[:, 0:3, 2:4] = 4
    # id 5: the forward pass only (reverse left it at 0): (5, 0) is kept
    a[:, 6:9, 6:9] = 5
    # the reverse pass only: (0, 8) becomes 0
    b[:, 6:9, 0:3] = 8
    # id 2 mostly agrees with reverse id 6, except a 2-voxel sliver under reverse id 7
    a[:, 8:10, 4:6] = 2
    b[:, 8:10, 4:6] = 6
    b[0, 8, 4:6] = 7
    out, table = split_consensus(a, b, min_size=3)
    assert (out[:, 0:5, 0:2] == 3).all()  # the larger side keeps the forward id
    assert (out[:, 0:3, 2:4] == 6).all()  # the smaller side: a new id above a's largest (5), first in (b, a) order
    assert (out[:, 6:9, 6:9] == 5).all()
    assert (out[:, 6:9, 0:3] == 0).all()
    assert (out[0, 8, 4:6] == 0).all() and (out[a == 2][2:] == 2).all()  # the small piece is dropped
    assert table.segments == 4 and table.kept.tolist() == [2, 3, 5]  # 6 is new: it has no forward origin
    np.testing.assert_array_equal(out, _loop_reference(a, b, 3))


def test_largest_piece_ties_and_small_largest_pieces():
    a = np.array([[[1, 1, 1, 1, 2, 2]]], np.uint64)
    b = np.array([[[0, 0, 5, 5, 7, 7]]], np.uint64)
    out, _ = split_consensus(a, b, min_size=1)
    # 1 overlaps 0 and 5 equally: the smaller b id (0) keeps it, the (1, 5) piece is new
    assert out.ravel().tolist() == [1, 1, 3, 3, 2, 2]
    out, _ = split_consensus(a, b, min_size=3)  # every piece is below 3 voxels
    assert not out.any()


@pytest.mark.parametrize("slab", [1, 3, None])
def test_streaming_slabs_give_the_rules_of_the_definition(slab, tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, (7, 9, 11)).astype(np.uint64)
    b = rng.integers(0, 5, (7, 9, 11)).astype(np.uint64)
    a[a == 4] = 2**40 + 3  # ids beyond 32 bits are kept as they are
    with h5py.File(tmp_path / "c.h5", "w") as f:
        ds = f.create_dataset("seg", a.shape, np.uint64)
        split_consensus(a, b, 5, out=ds, slab=slab)
        np.testing.assert_array_equal(ds[...], _loop_reference(a, b, 5))


def test_small_pieces_can_go_back_to_their_forward_segment():
    a = np.array([[[1, 1, 1, 1, 1, 1, 2, 2, 0]]], np.uint64)
    b = np.array([[[5, 5, 5, 6, 6, 7, 7, 8, 9]]], np.uint64)
    out, _ = split_consensus(a, b, min_size=2)  # FFN: the 1-voxel pieces become 0
    assert out.ravel().tolist() == [1, 1, 1, 3, 3, 0, 0, 0, 0]  # segment 2 is all small pieces
    out, _ = split_consensus(a, b, min_size=2, small="forward")  # only pieces >= 2 voxels split
    assert out.ravel().tolist() == [1, 1, 1, 3, 3, 1, 2, 2, 0]
