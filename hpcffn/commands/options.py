"""Option parsing shared by the stage commands: comma lists and parameter overrides.

A flag given on the command line overrides the plan's (or the defaults') value for one run;
malformed values become one-line errors that name the flag and show the expected form.
"""

from __future__ import annotations

from pathlib import Path

from hpcffn.core.errors import HpcffnError


def int_list(text: str | None, flag: str, n: int = 3, example: str = "24") -> tuple[int, ...] | None:
    """`"24,24,24"` -> (24, 24, 24); None stays None."""
    if text is None:
        return None
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise HpcffnError(f"{flag} {text!r}: write {n} integers separated by commas, e.g. {','.join([example] * n)}")
    return vals


def float_list(text: str | None, flag: str) -> tuple[float, ...] | None:
    """`"0.1,0.5"` -> (0.1, 0.5); None stays None."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise HpcffnError(f"{flag} {text!r}: write numbers separated by commas, e.g. 0.1,0.5,0.9") from None


def field_options(cls, options: dict, parse: dict | None = None) -> dict:
    """A command's options that set fields of the parameter model `cls` (a pydantic model): the
    flags are named after its fields, so the fields pick them out of `options` (the command's
    arguments), each read by `parse[field]` where its flag is text (e.g. "x,y,z")."""
    parse = parse or {}
    return {name: parse[name](options[name]) if name in parse else options[name]
            for name in cls.model_fields if name in options}


def with_overrides(cls, base, overrides: dict, section: str):
    """`base` (or cls defaults) with every non-None override, validated with one-line errors."""
    from pydantic import ValidationError

    values = base.model_dump() if base is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or section
        raise HpcffnError(f"{section}.{where}: {err['msg']}") from None


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Standalone outputs may be the user's own files (e.g. FFN's): replace them only when asked."""
    if path.exists() and not overwrite:
        raise HpcffnError(f"{path} already exists; remove it or choose another --output (pass --overwrite to replace it)")


def task_plan(plan_path: Path, job: str | None, key: str):
    """(plan, unit key) of a stage command: with --job and an array index, only that task's
    unit is read (hpcffn/core/units.py), not the whole plan.json."""
    if job is not None and key.isdigit():
        from hpcffn.core.units import load_task_plan

        return load_task_plan(plan_path, job, int(key))
    from hpcffn.core.plan_model import load_plan

    return load_plan(plan_path), key
