"""Where the shipped templates and cluster profiles live.

In a wheel they are the package `hpcffn.templates`; in a source checkout they are the
top-level `templates/` folder. Callers get a real directory path either way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def templates_dir() -> Path:
    """Directory holding the shipped *.sbatch.j2 templates."""
    # A source checkout uses its own templates/, even when another checkout is pip-installed
    # in editable mode (that install maps hpcffn.templates to its own tree).
    checkout = Path(__file__).resolve().parents[2] / "templates"
    if (checkout / "base.sbatch.j2").is_file():
        return checkout
    try:
        path = Path(str(resources.files("hpcffn.templates")))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    return checkout


def profiles_dir() -> Path:
    """Directory holding the shipped cluster profiles (<name>.yaml)."""
    return templates_dir() / "profiles"
