"""Issue 20 (second reliability sweep), the input side: TIF layouts and codecs, rescale, spec
values that cannot work, late errors validate now catches, and clearer messages."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
from plan_helpers import spec_dict, write_spec
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.core.errors import HpcffnError


def _tif_spec(tmp_path, raw_name="raw.tif", **volume):
    spec = spec_dict(volumes=[{"name": "v1", "raw": raw_name, **volume}], stages=["convert"])
    spec["subvolume"]["size"] = [32, 64, 64]
    return write_spec(tmp_path, spec, data=False)


# ------------------------------------------------------------------ 5. hyperstacks

def test_a_two_channel_imagej_hyperstack_is_refused_not_interleaved(tmp_path):
    stack = np.zeros((6, 2, 32, 32), np.uint8)
    stack[:, 1] = 200  # channel 2 differs: read as z it would alternate 0, 200, 0, 200 ...
    tifffile.imwrite(tmp_path / "raw.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    proc = hpcffn("convert", "--raw", tmp_path / "raw.tif", "--output", tmp_path / "out.h5")
    assert_one_line_error(proc, "raw.tif", "hyperstack", "ZCYX", "channels 2", "Split Channels")
    assert not (tmp_path / "out.h5").exists()
    assert_one_line_error(hpcffn("validate", _tif_spec(tmp_path)), "hyperstack", "channels 2")


def test_a_plain_imagej_stack_still_converts(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", np.full((6, 32, 32), 7, np.uint8), imagej=True)
    proc = hpcffn("convert", "--raw", tmp_path / "raw.tif", "--output", tmp_path / "out.h5")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out.h5") as fh:
        assert fh["raw"].shape == (6, 32, 32)


# ------------------------------------------------------------------ 6, 19. rescale

def _float_raw(tmp_path, high=4095.0):
    raw = np.linspace(0, high, 20 * 130 * 70, dtype=np.float32).reshape(20, 130, 70)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    return raw


def test_float_raw_beyond_0_1_with_rescale_dtype_is_refused_not_saturated(tmp_path):
    _float_raw(tmp_path)
    proc = hpcffn("convert", "--raw", tmp_path / "raw.tif", "--rescale", "dtype", "--output", tmp_path / "out.h5")
    assert_one_line_error(proc, "float32", "0..4095", "rescale minmax")
    assert not (tmp_path / "out.h5").exists()
    assert_one_line_error(hpcffn("validate", _tif_spec(tmp_path, rescale="dtype")), "sampled values 0..4095",
                          "rescale: minmax")
    assert hpcffn("validate", _tif_spec(tmp_path, rescale="minmax")).returncode == 0


def test_float_raw_in_0_1_with_rescale_dtype_still_converts(tmp_path):
    _float_raw(tmp_path, high=1.0)
    proc = hpcffn("convert", "--raw", tmp_path / "raw.tif", "--rescale", "dtype", "--output", tmp_path / "out.h5")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "out.h5") as fh:
        assert fh["raw"][0, 0, 0] == 0 and fh["raw"][-1, -1, -1] == 255


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_validate_refuses_non_uint8_tif_raw_with_rescale_none(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "raw.tif", np.linspace(0, 300, 20 * 130 * 70).astype(dtype).reshape(20, 130, 70))
    assert_one_line_error(hpcffn("validate", _tif_spec(tmp_path)), "volume v1", np.dtype(dtype).name,
                          "rescale is none", "rescale: minmax")


def test_validate_says_what_rescale_dtype_does_to_dark_uint16(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", np.linspace(0, 4095, 20 * 130 * 70).astype(np.uint16).reshape(20, 130, 70))
    proc = hpcffn("validate", _tif_spec(tmp_path, rescale="dtype"))
    assert proc.returncode == 0, proc.stderr
    assert "maps them to 0..16 of 0..255" in proc.stderr and "rescale: minmax" in proc.stderr


# ------------------------------------------------------------------ 19. other late errors

@pytest.mark.parametrize("field", ["training.init_checkpoint", "inference.checkpoint"])
def test_validate_refuses_a_checkpoint_that_does_not_exist(tmp_path, field):
    spec = spec_dict()
    section, key = field.split(".")
    spec["ffn"][section] = {key: "models/ckpt-100"}
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), f"ffn.{field}", "models/ckpt-100")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ckpt-100.index").write_bytes(b"")
    assert hpcffn("validate", write_spec(tmp_path, spec)).returncode == 0


def test_validate_finds_a_middle_page_of_another_size_in_a_multipage_tif(tmp_path):
    with tifffile.TiffWriter(tmp_path / "raw.tif") as w:
        for z in range(20):
            w.write(np.zeros((130, 70) if z != 7 else (130, 71), np.uint8))  # 7: not a sampled slice
    assert_one_line_error(hpcffn("validate", _tif_spec(tmp_path)), "raw.tif", "page 7")


# ------------------------------------------------------------------ 16. codecs

def test_lzw_tif_slices_convert(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"s{z}.tif", np.full((16, 16), z, np.uint8), compression="lzw")
    proc = hpcffn("convert", "--raw", folder, "--output", tmp_path / "out.h5")
    assert proc.returncode == 0, proc.stderr


def test_a_missing_codec_is_named_not_called_damage(tmp_path, monkeypatch):
    import tifffile.tifffile as tt

    from hpcffn.io.tif import open_volume

    tifffile.imwrite(tmp_path / "s.tif", np.ones((2, 16, 16), np.uint8), compression="lzw")
    # As on a machine without imagecodecs: tifffile then knows no LZW decoder.
    monkeypatch.setattr(tt, "imagecodecs", None)
    monkeypatch.setattr(tt.TIFF.DECOMPRESSORS, "_codecs", {1: tt.identityfunc})
    with open_volume(str(tmp_path / "s.tif")) as reader, pytest.raises(HpcffnError) as err:
        reader.read(0, 1)
    assert "LZW" in str(err.value) and "imagecodecs" in str(err.value) and "damaged" not in str(err.value)


# ------------------------------------------------------------------ 18. HDF5 filters

def test_an_hdf5_filter_without_its_plugin_is_named(tmp_path):
    pytest.importorskip("hdf5plugin")
    # Written where hdf5plugin is loaded; read by hpcffn, which does not load it.
    subprocess.run([sys.executable, "-c", (
        "import hdf5plugin, h5py, numpy as np\n"
        f"with h5py.File({str(tmp_path / 'in.h5')!r}, 'w') as f:\n"
        "    f.create_dataset('raw', data=np.zeros((4, 16, 16), np.uint8), **hdf5plugin.Blosc())\n")], check=True)
    env = {**os.environ, "HDF5_PLUGIN_PATH": str(tmp_path / "none")}
    proc = subprocess.run(["hpcffn", "convert", "--raw", f"{tmp_path}/in.h5:raw", "--output", str(tmp_path / "o.h5")],
                          capture_output=True, text=True, env=env, check=False)
    assert_one_line_error(proc, f"{tmp_path}/in.h5:raw", "filter 32001 (blosc)", "HDF5_PLUGIN_PATH")


# ------------------------------------------------------------------ 12. spec values that cannot work

def test_overlap_zero_with_several_tiles_along_an_axis_is_refused(tmp_path):
    spec = spec_dict()
    spec["subvolume"]["overlap"] = [0, 0, 0]
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "subvolume.overlap", "0 along z and y,",
                          "at least 1")
    spec["subvolume"]["overlap"] = [1, 1, 0]  # x (70 voxels) is one tile: no face to join across
    assert hpcffn("validate", write_spec(tmp_path, spec)).returncode == 0


def test_groups_true_is_refused_not_one_group(tmp_path):
    spec = spec_dict()
    spec["subvolume"]["groups"] = True
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "subvolume.groups", "integer")


# ------------------------------------------------------------------ 13. time within the signal grace

@pytest.mark.parametrize("stage", ["train", "infer"])
def test_a_time_within_the_checkpoint_signal_grace_is_refused(tmp_path, stage):
    spec = spec_dict(cluster={"profile": "generic", stage: {"time": "00:04:00", "gpus": 1}})
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), f"cluster.{stage}.time", "00:04:00",
                          "240 s", "grace of 300 s", "USR1@300")
    spec["cluster"][stage]["signal_grace"] = 60
    assert hpcffn("validate", write_spec(tmp_path, spec)).returncode == 0


# ------------------------------------------------------------------ 15. templates

@pytest.mark.parametrize("text,words", [
    ('{% extends "convert.sbatch.j2" %}\n', ["extends or includes itself"]),
    ('{% include "loop.j2" %}\n', ["extends or includes itself"]),
    ("#!/bin/bash\n{{ 1/0 }}\n", ["convert.sbatch.j2 line 2", "ZeroDivisionError"]),
    (b"#!/bin/bash\n# caf\xe9\n", ["not UTF-8"]),
])
def test_a_broken_template_is_a_one_line_error(tmp_path, text, words):
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "convert.sbatch.j2").write_bytes(text if isinstance(text, bytes) else text.encode())
    (tdir / "loop.j2").write_text('{% include "convert.sbatch.j2" %}\n')
    spec = spec_dict(volumes=[{"name": "v1", "raw": "raw.tif"}], templates="tpl", stages=["convert"])
    spec["subvolume"]["size"] = [32, 64, 64]
    tifffile.imwrite(tmp_path / "raw.tif", np.zeros((20, 130, 70), np.uint8))
    assert_one_line_error(hpcffn("plan", write_spec(tmp_path, spec, data=False)), *words)


# ------------------------------------------------------------------ 15. zero-length datasets, report.json

def test_a_zero_length_dataset_to_convert_or_partitions_is_one_line(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as fh:
        fh["raw"] = np.zeros((0, 10, 10), np.uint8)
        fh["stack"] = np.zeros((0, 10, 10), np.uint32)
    assert_one_line_error(hpcffn("convert", "--raw", f"{tmp_path}/in.h5:raw", "--output", tmp_path / "o.h5"),
                          "in.h5:raw", "empty")
    proc = hpcffn("stage", "partitions", "--input", f"{tmp_path}/in.h5:stack", "--output", f"{tmp_path}/af.h5:af")
    assert_one_line_error(proc, "in.h5:stack", "empty")


@pytest.mark.parametrize("content,words", [("[1, 2]", ["top level is a list"]),
                                           ('{"tiles": "x"}', ['"tiles" is not a list'])])
def test_a_report_json_of_another_shape_is_one_line(mini_plan, content, words):
    path = mini_plan.layout.evaluation_report
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    proc = hpcffn("report", mini_plan.layout.root, "--tiles", "0")
    assert_one_line_error(proc, "report.json", *words)


# ------------------------------------------------------------------ 21. smaller messages

def test_a_spec_or_profile_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "spec_dir").mkdir()
    assert_one_line_error(hpcffn("validate", tmp_path / "spec_dir"), "is a directory")
    (tmp_path / "prof").mkdir()
    spec = spec_dict(cluster={"profile": "prof/"})
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "cluster.profile", "is a directory")


def test_a_templates_path_that_is_a_file_says_so(tmp_path):
    (tmp_path / "tpl").write_text("not a folder")
    spec = spec_dict(templates="tpl")
    assert_one_line_error(hpcffn("validate", write_spec(tmp_path, spec)), "templates", "is a file, not a directory")


def test_a_profile_that_is_a_yaml_list_names_profile_keys(tmp_path):
    (tmp_path / "site.yaml").write_text("- a\n- b\n")
    spec = spec_dict(cluster={"profile": "site.yaml"})
    proc = hpcffn("validate", write_spec(tmp_path, spec))
    assert_one_line_error(proc, "site.yaml", "profile keys", "max_time")
    assert "workdir" not in proc.stderr


def test_sixteen_objects_with_large_ids_are_counted_as_sixteen(tmp_path):
    stack = np.zeros((4, 32, 32), np.uint16)
    for i in range(16):
        stack[:, (i // 4) * 8:(i // 4) * 8 + 4, (i % 4) * 8:(i % 4) * 8 + 4] = 1000 * (i + 1)
    with h5py.File(tmp_path / "in.h5", "w") as fh:
        fh["stack"] = stack
    proc = hpcffn("convert", "--groundtruth", f"{tmp_path}/in.h5:stack", "--output", tmp_path / "o.h5")
    assert proc.returncode == 0, proc.stderr
    assert "'objects': 16}" in proc.stdout, proc.stdout
