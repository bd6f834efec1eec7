"""Golden scripts: one reviewed rendered script per shipped profile and stage, compared on every run.

A template or profile change then shows up as a diff a person reads, not only as a passing lint.
After an intended change, regenerate with `HPCFFN_UPDATE_GOLDEN=1 pytest tests/test_plan_golden.py`
and review `git diff tests/golden/` before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from plan_helpers import spec_dict, write_h5, write_spec

from hpcffn.plan.planner import make_plan
from hpcffn.plan.resources import profiles_dir

GOLDEN = Path(__file__).resolve().parent / "golden"
PROFILES = sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _spec(folder: Path, profile: str) -> Path:
    """Every stage planned (TIF-like polarity white makes convert run), inputs and workdir apart."""
    write_h5(folder / "inputs" / "v1.h5")
    runtime = {"runtime": "apptainer", "image": "/shared/images/hpcffn.sif"} if profile != "local" else {"runtime": "none"}
    spec = spec_dict(
        workdir=str(folder / "wd"),
        volumes=[{"name": "v1", "raw": str(folder / "inputs" / "v1.h5"), "groundtruth": str(folder / "inputs" / "v1.h5"),
                  "polarity": "white"}],
        cluster={"profile": profile},
        container=runtime,
    )
    return write_spec(folder / "specs", spec, data=False)


def _one_per_stage(scripts: dict[str, str]) -> dict[str, str]:
    """The first script (by name) of each jobs/<stage>/ folder: groups and levels differ only in their unit."""
    chosen: dict[str, str] = {}
    for rel in sorted(scripts):
        stage = Path(rel).parent.name
        chosen.setdefault(stage, rel)
    return chosen


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_scripts_match_the_reviewed_golden_copies(tmp_path, profile):
    planned = make_plan(_spec(tmp_path, profile))
    update = os.environ.get("HPCFFN_UPDATE_GOLDEN") == "1"
    expected_names = set()
    for stage, rel in _one_per_stage(planned.scripts).items():
        text = planned.scripts[rel].replace(str(tmp_path), "/TMP")
        golden = GOLDEN / profile / f"{stage}__{Path(rel).name}"
        expected_names.add(golden.name)
        if update:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
            continue
        assert golden.is_file(), f"no golden copy {golden}: run with HPCFFN_UPDATE_GOLDEN=1 and review it"
        assert text == golden.read_text(), (
            f"{rel} ({profile}) differs from {golden}: if the change is intended, regenerate with "
            "HPCFFN_UPDATE_GOLDEN=1 and review the diff")
    if not update:
        stale = sorted(p.name for p in (GOLDEN / profile).glob("*") if p.name not in expected_names)
        assert not stale, f"golden copies of scripts no longer planned for {profile}: {stale}"
