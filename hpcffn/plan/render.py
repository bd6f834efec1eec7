"""Rendering batch scripts from Jinja templates and writing the workdir without losing edits.

Templates are looked up in the user's template directory first, then the shipped ones, with
StrictUndefined so a typo in a template is an error, not an empty string. A script whose
content no longer matches the hash recorded in the previous plan.json was edited by hand:
it is kept and the new render goes beside it as `<script>.new` (unless force).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from hpcffn.core.atomic import atomic_write_text
from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import Layout
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import CONSENSUS_STEPS, STAGES
from hpcffn.core.units import write_unit_indexes
from hpcffn.plan.resources import templates_dir


def environment(user_dir: Path | None = None):
    """Jinja environment: user templates first, StrictUndefined, `q` = shell quoting."""
    import jinja2

    dirs = [str(user_dir)] if user_dir else []
    dirs.append(str(templates_dir()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def render(env, template: str, context: dict) -> str:
    """Render one template with one-line errors that name the template."""
    import jinja2

    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise HpcffnError(f"template {exc.name} not found in {env.loader.searchpath}; restore it or fix the templates directory") from None
    except jinja2.TemplateSyntaxError as exc:
        raise HpcffnError(f"template {exc.filename or exc.name}: line {exc.lineno}: {exc.message}; fix the template") from None
    except jinja2.UndefinedError as exc:
        raise HpcffnError(f"template {template}: {exc.message}; use only the variables documented in docs/spec.md") from None
    except RecursionError:
        raise HpcffnError(f"template {template} extends or includes itself (directly or through another template): "
                          "make the chain of extends/include end in a template that names none") from None
    except UnicodeDecodeError as exc:
        raise HpcffnError(f"a template used by {template} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8") from None
    except jinja2.TemplateError as exc:
        raise HpcffnError(f"template {template}: {exc}; fix the template") from None
    except Exception as exc:  # noqa: BLE001 - an expression in the template failed ({{ 1/0 }}, a bad filter argument)
        raise HpcffnError(f"template {_where(exc, template)}: {type(exc).__name__}: {exc}; fix the template") from None


def _where(exc: BaseException, template: str) -> str:
    """`file line N` of the template line that failed (Jinja puts template frames in the traceback)."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    return f"{frames[-1].filename} line {frames[-1].lineno}" if frames else template


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class WriteReport:
    """What a (dry) run did to each file, for the summary."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_edited: list[str] = field(default_factory=list)  # the .new went beside them
    overwritten_edited: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # scripts of the previous plan no longer planned
    dirs: list[str] = field(default_factory=list)


def previous_head(layout: Layout) -> dict:
    """The previous plan's experiment-level fields and jobs (their units may be left out); {} if none.

    Read from units/plan.head.json, written with plan.json: a few KB where plan.json holds every
    tile (tens of MB at 100,000 tiles). plan.json itself where the head is missing.
    """
    if not layout.plan.is_file():
        return {}
    for path in (layout.plan_head, layout.plan):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(old, dict):
            return old
    return {}


def previous_hashes(layout: Layout) -> dict[str, str]:
    """script -> sha256 recorded by the previous plan (empty when there is none or it is unreadable)."""
    try:
        return {j["script"]: j["sha256"] for j in previous_head(layout).get("jobs", [])}
    except (KeyError, TypeError, AttributeError):
        return {}


def pending_renders(layout: Layout) -> list[str]:
    """`<script>.new` files a re-plan left beside hand-edited scripts (relative to the workdir)."""
    jobs = layout.root / "jobs"
    return sorted(str(p.relative_to(layout.root)) for p in jobs.glob("*/*.sbatch.new")) if jobs.is_dir() else []


def write_workdir(plan: Plan, scripts: dict[str, str], resolved_yaml: str, *, force: bool, dry_run: bool,
                  fingerprints: dict[str, list[str]] | None = None, before_switch=None,
                  records: dict[str, str] | None = None) -> WriteReport:
    """Write scripts (edit-safe), log dirs, spec.resolved.yaml, then units/ and plan.json as one (`switch_plan`).

    `fingerprints`: plan/fingerprints.py's (computed here when not given); `before_switch`: called
    once everything new is written beside the old plan, before the switch (jobs/replan.py);
    `records`: core/units.tile_records of the plan's tiles, where already made.
    """
    try:
        return _write(plan, scripts, resolved_yaml, force=force, dry_run=dry_run, fingerprints=fingerprints,
                      before_switch=before_switch, records=records)
    except OSError as exc:
        raise HpcffnError(f"cannot write into the workdir {plan.workdir} ({exc.strerror}: {exc.filename}); "
                          "choose a workdir you can write to") from None


def _write(plan: Plan, scripts: dict[str, str], resolved_yaml: str, *, force: bool, dry_run: bool,
           fingerprints: dict[str, list[str]] | None, before_switch, records: dict[str, str] | None) -> WriteReport:
    layout = plan.layout
    report = WriteReport()
    recorded = previous_hashes(layout)
    report.stale = sorted(rel for rel in recorded if rel not in scripts and (layout.root / rel).exists())
    planned = {j.stage for j in plan.jobs}
    for stage in STAGES:
        if stage in CONSENSUS_STEPS and stage not in planned:
            continue  # made only in plans with ffn.inference.consensus
        d = layout.logs_dir(stage)
        if not d.is_dir():
            report.dirs.append(str(d))
            if not dry_run:
                d.mkdir(parents=True, exist_ok=True)
    for rel, text in scripts.items():
        path = layout.root / rel
        new_path = path.with_name(path.name + ".new")
        if path.exists():
            current = path.read_text(encoding="utf-8", errors="replace")
            if current == text:
                report.unchanged.append(rel)
                if force and new_path.exists() and not dry_run:
                    new_path.unlink()
                continue
            edited = recorded.get(rel) != sha256(current)
            if edited and not force and recorded.get(rel) == sha256(text):
                # Edited by hand, and the new render is the render the user edited: nothing to merge.
                report.unchanged.append(rel)
                continue
            if edited and not force:
                report.kept_edited.append(rel)
                if not dry_run:
                    atomic_write_text(new_path, text, mode=0o755)
                continue
            if edited:
                report.overwritten_edited.append(rel)
        report.written.append(rel)
        if not dry_run:
            atomic_write_text(path, text, mode=0o755)
            if new_path.exists():
                new_path.unlink()
    if not dry_run:
        atomic_write_text(layout.resolved_spec, resolved_yaml, mode=0o644)
        switch_plan(plan, fingerprints, before_switch, records)
    return report


_PLACEHOLDER = "0" * 16


def plan_text(plan: Plan) -> str:
    """plan.json's text, with plan.plan_id set to a hash of that text (the same plan: the same id)."""
    plan.plan_id = _PLACEHOLDER
    text = plan.model_dump_json(indent=1)
    plan.plan_id = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return text.replace(f'"plan_id": "{_PLACEHOLDER}"', f'"plan_id": "{plan.plan_id}"', 1)


def switch_plan(plan: Plan, fingerprints: dict[str, list[str]] | None = None, before_switch=None,
                records: dict[str, str] | None = None) -> None:
    """units/ and plan.json switched as one: both written beside the old ones, then units/ renamed
    in and plan.json renamed last.

    Killed anywhere, the workdir holds the old plan whole, or the new units/ beside the old
    plan.json, which tasks refuse (their plan ids differ: core/units.check_plan_id), or no units/
    at all, where tasks read the (old) plan.json whole.
    """
    import os
    import shutil

    from hpcffn.core.atomic import atomic_path
    from hpcffn.core.units import tile_records

    layout = plan.layout
    for left in layout.root.glob(".units.*-*"):  # an interrupted plan's (this runs under the plan lock)
        shutil.rmtree(left, ignore_errors=True)
    records = records if records is not None else tile_records(plan.tiles)
    if fingerprints is None:
        from hpcffn.plan.fingerprints import unit_fingerprints

        fingerprints = unit_fingerprints(plan, records)
    text = plan_text(plan)
    staged = layout.root / f".units.new-{os.getpid()}"
    old = layout.root / f".units.old-{os.getpid()}"
    try:
        with atomic_path(layout.plan) as tmp:  # renamed onto plan.json as the block ends
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            write_unit_indexes(plan, fingerprints, into=staged, records=records)  # what array tasks read
            if before_switch is not None:
                before_switch()
            if layout.units_dir.exists():
                os.rename(layout.units_dir, old)
            os.rename(staged, layout.units_dir)
    except BaseException:
        if old.exists() and not layout.units_dir.exists():
            os.rename(old, layout.units_dir)  # stopped between the renames: the old plan stays whole
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
