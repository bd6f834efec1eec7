"""TIF readers, streamed connected components across slabs, and the convert stage."""

import cc3d
import h5py
import numpy as np
import pytest
import tifffile

from hpcffn.core.errors import HpcffnError
from hpcffn.io.labeling import foreground, label_volume
from hpcffn.io.tif import TifStack, open_volume
from hpcffn.stages.convert import ConvertOptions, convert


def same_partition(a, b):
    """True when two label arrays define the same objects (ids may differ)."""
    if ((a == 0) != (b == 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]], axis=1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


def white_objects(shape, seed):
    """White (255) background with black (0) objects, including long ones crossing many slabs."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 255, np.uint8)
    img[rng.random(shape) < 0.25] = 0  # speckle: many small components
    z = shape[0]
    img[:, 2:5, 2:5] = 0  # a rod along the whole z axis
    for k in range(z):  # a diagonal staircase: only 26-connected between slices
        img[k, 10 + k % 3, 12] = 0
    img[:, 7, :] = 255  # a white wall
    return img


def write_slices(folder, vol, names=None):
    folder.mkdir()
    for i, sl in enumerate(vol):
        tifffile.imwrite(folder / (names[i] if names else f"slice_{i}.tif"), sl)


def _streamed(img, connectivity, slab):
    class Reader:
        shape, dtype, name = img.shape, img.dtype, "mem"

        def read(self, z0, z1):
            return img[z0:z1]

    out = np.zeros(img.shape, np.uint64)

    def write(z0, ids):
        out[z0:z0 + len(ids)] = ids

    n = label_volume(Reader(), write, lambda a, b: out[a:b].copy(), "white", connectivity, slab)
    return out, n


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("slab", [1, 3, 100])
def test_streamed_components_equal_whole_array(connectivity, slab):
    img = white_objects((17, 20, 19), 0)
    out, n = _streamed(img, connectivity, slab)
    want = cc3d.connected_components(img == 0, connectivity=connectivity)
    assert same_partition(out, want)
    assert n == want.max() == len(np.unique(out)) - 1
    # Ids are numbered by first appearance, so they do not depend on the slab size.
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("shape", [(60, 1, 1), (1, 1, 60), (1, 60, 1)])
@pytest.mark.parametrize("connectivity", [18, 26])
def test_components_of_a_line_of_voxels(shape, connectivity):
    """On a line every connectivity is 6 (cc3d 4.1 raises for 26 on this line, so labeling asks for 6)."""
    img = np.where(np.random.default_rng(3).random(shape) > 0.5, 0, 255).astype(np.uint8)
    out, n = _streamed(img, connectivity, 100)
    np.testing.assert_array_equal(out, cc3d.connected_components(img == 0, connectivity=6))
    assert n == out.max() > 1


def test_foreground_polarities():
    assert foreground(np.array([0, 127, 128, 255], np.uint8), "white").tolist() == [True, True, False, False]
    assert foreground(np.array([0, 1, 65535], np.uint16), "black").tolist() == [False, True, True]
    assert foreground(np.array([0, 40000], np.uint16), "white").tolist() == [True, False]


def test_convert_tif_directory_natural_order(tmp_path):
    gt = white_objects((12, 16, 15), 1)
    raw = np.random.default_rng(2).integers(0, 255, gt.shape).astype(np.uint8)
    names = [f"s{i}.tif" for i in range(12)]  # s2 must come before s10
    write_slices(tmp_path / "gt", gt, names)
    write_slices(tmp_path / "raw", raw, names)
    info = convert(tmp_path / "out.h5", ConvertOptions(raw=str(tmp_path / "raw"), groundtruth=str(tmp_path / "gt"),
                                                       polarity="white", slab=2, progress=False))
    with h5py.File(tmp_path / "out.h5") as fh:
        np.testing.assert_array_equal(fh["raw"][...], raw)
        stack = fh["stack"][...]
        assert fh["stack"].dtype == np.uint64 and fh["stack"].chunks and fh["stack"].compression == "gzip"
    want = cc3d.connected_components(gt == 0, connectivity=6)
    np.testing.assert_array_equal(stack, want)
    assert info["objects"] == want.max()


def test_convert_multipage_black_labels_and_rescale(tmp_path, capsys):
    vol = np.zeros((6, 9, 10), np.uint16)
    vol[1:4, 2:5, 2:5] = 7
    vol[2:6, 6:8, 1:9] = 300
    tifffile.imwrite(tmp_path / "gt.tif", vol)
    tifffile.imwrite(tmp_path / "raw.tif", (vol * 100).astype(np.uint16))
    convert(tmp_path / "a.h5", ConvertOptions(groundtruth=str(tmp_path / "gt.tif"), polarity="black", slab=2))
    convert(tmp_path / "b.h5", ConvertOptions(groundtruth=str(tmp_path / "gt.tif"), polarity="labels", slab=4))
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert same_partition(a["stack"][...], vol.astype(np.uint64))
        np.testing.assert_array_equal(b["stack"][...], vol)
    with pytest.raises(HpcffnError, match="--rescale"):
        convert(tmp_path / "c.h5", ConvertOptions(raw=str(tmp_path / "raw.tif")))
    convert(tmp_path / "c.h5", ConvertOptions(raw=str(tmp_path / "raw.tif"), rescale="minmax", slab=1, progress=True))
    assert "convert c.h5" in capsys.readouterr().out  # the bar (core/progress.py): min/max pass, then the slices
    convert(tmp_path / "d.h5", ConvertOptions(raw=str(tmp_path / "raw.tif"), rescale="dtype"))
    with h5py.File(tmp_path / "c.h5") as c, h5py.File(tmp_path / "d.h5") as d:
        r = c["raw"][...]
        assert r.dtype == np.uint8 and r.max() == 255 and r.min() == 0
        assert r[2, 6, 1] == 255 and r[2, 3, 3] == round(700 / 30000 * 255)
        assert d["raw"][2, 6, 1] == round(30000 * 255 / 65535)


def test_convert_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HpcffnError, match="contains no .tif"):
        open_volume(str(tmp_path / "empty"))
    d = tmp_path / "mixed"
    d.mkdir()
    tifffile.imwrite(d / "a1.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(d / "a2.tif", np.zeros((4, 6), np.uint8))
    with pytest.raises(HpcffnError, match="a2.tif.*same size"):
        open_volume(str(d))
    (d / "a2.tif").unlink()
    tifffile.imwrite(d / "a2.tif", np.zeros((4, 5), np.uint16))
    with pytest.raises(HpcffnError, match="a2.tif has dtype uint16"):
        open_volume(str(d))
    tifffile.imwrite(tmp_path / "r.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "g.tif", np.zeros((3, 4, 6), np.uint8), photometric="minisblack")
    with pytest.raises(HpcffnError, match="same voxels"):
        convert(tmp_path / "o.h5", ConvertOptions(raw=str(tmp_path / "r.tif"), groundtruth=str(tmp_path / "g.tif"),
                                                  polarity="white"))
    assert not (tmp_path / "o.h5").exists()
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        fh["other"] = np.zeros((2, 2, 2))
    with pytest.raises(HpcffnError, match="datasets present: other"):
        open_volume(f"{tmp_path}/x.h5:raw")
    convert(tmp_path / "o.h5", ConvertOptions(raw=str(tmp_path / "r.tif")))
    with pytest.raises(HpcffnError, match="already exists"):
        convert(tmp_path / "o.h5", ConvertOptions(raw=str(tmp_path / "r.tif")))
    # Bad groundtruth options fail before the (possibly hours-long) raw pass reads anything.
    reads = []
    monkeypatch.setattr(TifStack, "read", lambda self, z0, z1: reads.append(self.name))
    for kw, needle in (({"polarity": "bogus"}, "polarity"), ({"polarity": "white", "connectivity": 7}, "connectivity")):
        with pytest.raises(HpcffnError, match=needle):
            convert(tmp_path / "p.h5", ConvertOptions(raw=str(tmp_path / "r.tif"), groundtruth=str(tmp_path / "r.tif"),
                                                      **kw))
    assert reads == []
    monkeypatch.undo()
    for slab in (0, -2):  # not silently an empty (all-zero) output
        with pytest.raises(HpcffnError, match="--slab"):
            convert(tmp_path / "s.h5", ConvertOptions(raw=str(tmp_path / "r.tif"), slab=slab))
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.slow
def test_long_stack_streams_with_bounded_memory(tmp_path):
    """A 2,000-slice white-background stack: slab-sized working set, one id per rod."""
    import subprocess
    import sys

    d = tmp_path / "gt"
    d.mkdir()
    sl = np.full((192, 192), 255, np.uint8)
    sl[10:14, 10:14] = 0
    sl[30:34, 40:50] = 0
    for i in range(2000):
        tifffile.imwrite(d / f"z{i}.tif", sl)
    code = (
        "from hpcffn.stages.convert import ConvertOptions, convert;"
        f"i=convert({str(tmp_path / 'o.h5')!r}, ConvertOptions(groundtruth={str(d)!r}, polarity='white', slab=16));"
        "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
        "print(i['objects'], hwm)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 2
    # The uint64 stack is 590 MB; the converter's peak stays a fraction of it.
    assert int(out[1]) < 300 * 1024, f"peak RSS {int(out[1]) // 1024} MB"
    with h5py.File(tmp_path / "o.h5") as fh:
        s = fh["stack"]
        assert s.shape == (2000, 192, 192)
        assert set(np.unique(s[::97])) == {0, 1, 2}
