"""Pretrained FFN models shipped with hpcffn, selected by name (`--checkpoint fib25`).

Each lives in a folder of this package with its checkpoint files, LICENSE, NOTICE and a README
of provenance. Importing this module needs no TensorFlow (the planner checks names and model
settings on the login node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pretrained:
    name: str
    prefix: str  # checkpoint prefix inside this package
    model: dict  # the ffn.model settings the weights need (x,y,z where FFN uses x,y,z)
    description: str

    def path(self) -> str:
        return str(Path(__file__).resolve().parent / self.prefix)


PRETRAINED = {
    "fib25": Pretrained(
        name="fib25",
        prefix="fib25/model.ckpt-27465036",
        model={"name": "convstack_3d", "depth": 12, "features": 32, "fov_size": (33, 33, 33), "deltas": (8, 8, 8)},
        description="Google FFN's convstack_3d trained on FIB-25 (Drosophila, FIB-SEM, ~10 nm isotropic); "
        "image_mean 128, image_stddev 33",
    ),
}


def pretrained(name: str | Path | None) -> Pretrained | None:
    """The pretrained model a checkpoint setting names (exactly, e.g. "fib25"), else None.

    A path is never a name: write ./fib25 for a local folder called fib25.
    """
    return PRETRAINED.get(str(name)) if name is not None else None


def model_mismatch(p: Pretrained, model) -> str | None:
    """What in `model` (ModelParams) does not fit the pretrained weights, or None."""
    bad = [f"{k} {v!r} (given: {getattr(model, k)!r})" for k, v in p.model.items() if getattr(model, k) != v]
    if not bad:
        return None
    return f"the pretrained model {p.name} needs ffn.model " + ", ".join(bad)


def check_fits(name: str | Path | None, model) -> None:
    """A one-line error when `name` is a pretrained model that `model` (ModelParams) cannot load."""
    from hpcffn.core.errors import HpcffnError

    p = pretrained(name)
    if p is not None and (problem := model_mismatch(p, model)):
        raise HpcffnError(f"{problem}: drop the --depth/--features/--fov-size/--deltas overrides or use another checkpoint")
