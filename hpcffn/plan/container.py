"""The one place that builds the command prefix a job runs hpcffn with.

apptainer/singularity: `apptainer exec [--nv] [--bind src:dst[:ro],...] IMAGE hpcffn` (input
folders read-only, the workdir writable);
none: just `hpcffn` (a plain environment prepared by module loads / setup lines).
Scripts get it as a bash array with $IMAGE and $BINDS kept as editable variables; the local
runner and tests get plain argv lists from the same words.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hpcffn.plan.spec import ContainerSpec


def bind_list(container: ContainerSpec, inputs: list[str], writable: list[str] = ()) -> list[str]:
    """User binds plus (when auto_bind) src==dst binds: `inputs` read-only (`p:p:ro`), `writable`
    (the workdir) read-write, each left out where a bind already shows it under its own path.

    The read-only binds come first, so a workdir inside an input folder is mounted writable on
    top of it; an input inside the workdir is reached through the workdir's bind.
    """
    out = list(dict.fromkeys(container.binds))
    if not container.auto_bind:
        return out
    # Folders the user already binds at the same path inside; a bind to another path inside
    # (src:/elsewhere) does not make src/... visible under its own name.
    user = [b.split(":") for b in out]
    same_path = {parts[0] for parts in user if len(parts) == 1 or parts[1] == parts[0]}
    same_path_rw = {parts[0] for parts in user if (len(parts) == 1 or parts[1] == parts[0])
                    and (len(parts) < 3 or parts[2] != "ro")}
    rw = sorted(set(writable))
    ro = sorted(set(inputs) - set(rw))
    for p in ro:
        covered = same_path | set(rw) | {q for q in ro if q != p}
        if p not in same_path and p not in rw and not _inside_any(p, covered):
            out.append(f"{p}:{p}:ro")
    for p in rw:
        covered = same_path_rw | {q for q in rw if q != p}
        if p not in same_path_rw and not _inside_any(p, covered):
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
