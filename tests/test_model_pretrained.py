"""The shipped pretrained model `fib25` (Google FFN's FIB-25 checkpoint): files, names, settings."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from hpcffn.core.params import FFNParams, InferenceParams, ModelParams, TrainingParams
from hpcffn.core.pretrained import PRETRAINED, check_fits, pretrained

REPO = Path(__file__).resolve().parents[1]


def test_fib25_ships_its_checkpoint_with_licence_and_provenance():
    p = pretrained("fib25")
    folder = Path(p.path()).parent
    assert Path(p.path() + ".index").is_file() and Path(p.path() + ".data-00000-of-00001").is_file()
    assert Path(p.path() + ".data-00000-of-00001").stat().st_size > 2_000_000
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "google/ffn" in (folder / "NOTICE").read_text() and "google/ffn" in (folder / "README.md").read_text()
    # the wheel carries them: the folder is package data of hpcffn.core.pretrained
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "hpcffn.core.pretrained" in tool["packages"]
    globs = tool["package-data"]["hpcffn.core.pretrained"]
    shipped = {f for g in globs for f in (REPO / "hpcffn" / "core" / "pretrained").glob(g)}
    assert set(folder.iterdir()) <= shipped


def test_names_are_exact_and_paths_are_never_names():
    assert pretrained("fib25") is PRETRAINED["fib25"]
    assert pretrained("./fib25") is None and pretrained("FIB25") is None and pretrained(None) is None


def test_a_pretrained_name_needs_matching_model_settings():
    FFNParams(training=TrainingParams(init_checkpoint="fib25"), inference=InferenceParams(checkpoint="fib25"))
    with pytest.raises(ValidationError, match=r"pretrained model fib25 needs ffn.model depth 12 \(given: 2\)"):
        FFNParams(model=ModelParams(depth=2), training=TrainingParams(init_checkpoint="fib25"))
    with pytest.raises(ValidationError, match="fov_size"):
        FFNParams(model=ModelParams(fov_size=(17, 17, 17)), inference=InferenceParams(checkpoint="fib25"))
    FFNParams(model=ModelParams(image_mean=140.0, image_stddev=40.0), inference=InferenceParams(checkpoint="fib25"))
    from hpcffn.core.errors import HpcffnError

    with pytest.raises(HpcffnError, match="features"):
        check_fits("fib25", ModelParams(features=16))
    check_fits("train/g0", ModelParams(features=16))


def test_the_planner_keeps_the_name_and_resolves_paths(tmp_path):
    from hpcffn.plan.planner import _resolve_ffn

    spec = SimpleNamespace(ffn=FFNParams(training=TrainingParams(init_checkpoint="fib25"),
                                         inference=InferenceParams(checkpoint="runs/x")))
    ffn = _resolve_ffn(spec, tmp_path)
    assert ffn.training.init_checkpoint == "fib25"
    assert ffn.inference.checkpoint == str(tmp_path / "runs" / "x")


@pytest.mark.tf
def test_fib25_loads_into_the_default_model():
    pytest.importorskip("tensorflow")
    from hpcffn.ffn.model import build_model
    from hpcffn.ffn.tf1_import import load_weights, resolve_checkpoint

    assert resolve_checkpoint("fib25") == pretrained("fib25").path()
    assert load_weights(build_model(ModelParams()), "fib25") == 27465036
