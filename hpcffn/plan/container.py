"""The one place that builds the command prefix a job runs hpcffn with.

apptainer/singularity: `apptainer exec [--nv] [--bind src:dst[:ro],...] IMAGE hpcffn`;
none: just `hpcffn` (a plain environment prepared by module loads / setup lines).
Scripts get it as a bash array with $IMAGE and $BINDS kept as editable variables; the local
runner and tests get plain argv lists from the same words.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hpcffn.plan.spec import ContainerSpec


def bind_list(container: ContainerSpec, auto_paths: list[str]) -> list[str]:
    """User binds plus (when auto_bind) src==dst binds of the given paths, without duplicates."""
    out = list(dict.fromkeys(container.binds))
    # Folders the user already binds at the same path inside; a bind to another path inside
    # (src:/elsewhere) does not make src/... visible under its own name.
    same_path = {parts[0] for parts in (b.split(":") for b in out) if len(parts) == 1 or parts[1] == parts[0]}
    if container.auto_bind:
        wanted = sorted(set(auto_paths))
        for p in wanted:
            covered = same_path | {q for q in wanted if q != p}
            if not _inside_any(p, covered) and p not in same_path:
                out.append(p)
    return out


def _inside_any(path: str, parents: set[str]) -> bool:
    """True when `path` lies strictly inside one of `parents`."""
    pp = Path(path)
    return any(Path(q) in pp.parents for q in parents)


def exec_words(container: ContainerSpec, image: str, binds: str, gpu: bool) -> list[str]:
    """The prefix words; `image`/`binds` are given as already-formed words (literal or "$VAR")."""
    if container.runtime == "none":
        return [container.command]
    words = [container.runtime, "exec"]
    if gpu and container.nv:
        words.append("--nv")
    if binds:
        words += ["--bind", binds]
    words += [image, container.command]
    return words


def argv(container: ContainerSpec, binds: list[str], gpu: bool) -> list[str]:
    """The prefix as a plain argv list (for running it from Python)."""
    return exec_words(container, container.image or "", ",".join(binds), gpu)


def shell_array(container: ContainerSpec, binds: list[str], gpu: bool) -> str:
    """The prefix as the body of a bash array that refers to "$IMAGE" and "$BINDS"."""
    if container.runtime == "none":
        return shlex.quote(container.command)
    words = exec_words(container, "@IMAGE@", "@BINDS@" if binds else "", gpu)
    quoted = {"@IMAGE@": '"$IMAGE"', "@BINDS@": '"$BINDS"'}
    return " ".join(quoted.get(w, shlex.quote(w)) for w in words)
