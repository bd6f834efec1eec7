"""Calls to the SLURM client tools (sbatch, squeue, sacct, scontrol, scancel) and their parsing.

The only module that runs SLURM commands (`Slurm`, an object submit, status, cancel and
check are handed, so tests hand them a fake), so the rest of hpcffn deals in plain records
(`TaskInfo`) and one-line errors. Job ids are strings: "123" for a plain job, "123_4" for
task 4 of array job 123 (SLURM's own notation, accepted by scancel/scontrol/--dependency).
Status reads three sources because each one misses something: squeue (live, and recently
finished jobs with --json), sacct (long history, needs slurmdbd) and `scontrol show job`
(works where squeue has no JSON plugin). One unreadable record never breaks the rest.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

from hpcffn.core.errors import HpcffnError, SchedulerMissing, SchedulerNotAnswering

# States after which a job never runs again by itself.
DONE_STATES = {"COMPLETED"}
BAD_STATES = {
    "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
}
# Pending with one of these reasons never starts: treated like a failure by resume and status.
DEAD_PENDING_REASONS = {"DependencyNeverSatisfied"}
NO_VAL = 4294967294  # SLURM's "no value" for an array task id


@dataclass
class TaskInfo:
    """What SLURM says about one job or array task."""

    id: str  # SLURM's id of the record: "123_4", "123", or "123_[5-99]" for pending tasks listed as one
    state: str
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    source: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """True while the task may still run (pending, running, requeued, ...)."""
        if self.state in DONE_STATES or self.state in BAD_STATES:
            return False
        return not (self.state == "PENDING" and self.reason in DEAD_PENDING_REASONS)

    @property
    def failed(self) -> bool:
        return not self.alive and self.state not in DONE_STATES

    @property
    def cancelled_by_dependency(self) -> bool:
        """Cancelled only because a job it depends on failed (--kill-on-invalid-dep, or the
        local runner doing the same): a follower of a failure, not a cause."""
        return self.state == "CANCELLED" and self.reason in DEAD_PENDING_REASONS


def query_timeout() -> float:
    """Seconds a read-only SLURM call (squeue, sacct, scontrol show) may take: a down controller
    makes them retry for minutes, and `status` must answer before that (HPCFFN_SLURM_TIMEOUT)."""
    try:
        return max(1.0, float(os.environ.get("HPCFFN_SLURM_TIMEOUT", "20")))
    except ValueError:
        return 20.0


# ----------------------------------------------------------------------------------- sbatch
def parse_parsable(out: str) -> str:
    """Job id from `sbatch --parsable` output, which may be `jobid` or `jobid;cluster`."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    jid = line.split(";", 1)[0].strip()
    if not jid.isdigit():
        raise HpcffnError(f"sbatch printed {out.strip()!r} instead of a job id; check the sbatch output above")
    return jid


def sbatch_command(script: str | Path, array: str | None = None, dependency: str | None = None,
                   extra: list[str] | None = None) -> list[str]:
    """The exact sbatch command line hpcffn runs for one script (also what --dry-run prints)."""
    cmd = ["sbatch", "--parsable"]
    if array is not None:
        cmd.append(f"--array={array}")
    if dependency:
        cmd.append(f"--dependency={dependency}")
        cmd.append("--kill-on-invalid-dep=yes")
    cmd += list(extra or [])
    cmd.append(str(script))
    return cmd


def array_spec(ids: list[int], throttle: int | None = None) -> str:
    """Compact `--array` value: [0,1,2,5] -> "0-2,5", with an optional %throttle."""
    ids = sorted(set(ids))
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    spec = ",".join(parts)
    if throttle:
        spec += f"%{throttle}"
    return spec


def expand_array(spec: str) -> list[int]:
    """Task ids of an array string such as "2-5%2", "1,3,7-9" or "0-10:2"."""
    spec = spec.split("%", 1)[0].strip()
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        step = 1
        if ":" in part:
            part, s = part.split(":", 1)
            step = int(s)
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1, step))
        else:
            out.append(int(part))
    return out


# ------------------------------------------------------------------------- batch scripts
def sbatch_options(script: Path) -> dict[str, str]:
    """The `#SBATCH` options at the top of a script (long names; -J/-o/-e/-c mapped)."""
    short = {"-J": "job-name", "-o": "output", "-e": "error", "-c": "cpus-per-task", "-a": "array"}
    opts: dict[str, str] = {}
    for line in script.read_text(errors="replace").splitlines():
        s = line.strip()
        if not s or (s.startswith("#") and not s.startswith("#SBATCH")):
            continue
        if not s.startswith("#SBATCH"):
            break  # sbatch stops reading options at the first command
        try:
            words = shlex.split(s[len("#SBATCH"):], comments=True)
        except ValueError:
            continue
        for i, w in enumerate(words):
            if w.startswith("--"):
                key, _, val = w[2:].partition("=")
                opts[key] = val
            elif w in short and i + 1 < len(words):
                opts[short[w]] = words[i + 1]
    return opts


def expand_pattern(pattern: str, job_name: str, job_id: str, task: int | None) -> str:
    """SLURM's filename pattern (%x %A %a %j %u %N %%) as sbatch would expand it."""
    vals = {"x": job_name, "A": job_id, "a": str(task if task is not None else 4294967294),
            "j": job_id, "u": os.environ.get("USER", "user"), "N": socket.gethostname().split(".")[0], "%": "%"}
    return re.sub(r"%(\d*)([xAajuN%])", lambda m: vals[m.group(2)].zfill(int(m.group(1) or 0)), pattern)


def make_log_dirs(script: Path, workdir: Path) -> None:
    """Create the directories of the script's --output/--error files: SLURM does not, and fails the job."""
    opts = sbatch_options(script)
    for key in ("output", "error"):
        pattern = opts.get(key)
        if not pattern:
            continue
        parent = Path(pattern).parent
        if "%" in str(parent):
            continue
        (parent if parent.is_absolute() else workdir / parent).mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------ queries
def _state_str(value) -> str:
    if isinstance(value, list):  # newer SLURM: ["COMPLETED"] or flags
        value = value[0] if value else "UNKNOWN"
    return str(value or "UNKNOWN").split()[0].rstrip("+")


def _exit_pair(text: str) -> int | None:
    """Exit status from scontrol's/sacct's "ExitCode=status:signal" ("1:0" -> 1)."""
    head = text.split(":")[0]
    return int(head) if head.isdigit() else None


def _exit_int(value) -> int | None:
    """Exit status from squeue's exit_code (22.05: raw wait status; newer: a dict)."""
    if value is None:
        return None
    if isinstance(value, dict):
        rc = value.get("return_code")
        if isinstance(rc, dict):
            rc = rc.get("number")
        return int(rc) if rc is not None else None
    v = int(value)
    return v >> 8 if v > 255 else v


def _num(value):
    """squeue --json numbers may be plain ints or {"set": bool, "number": n} (newer SLURM)."""
    if isinstance(value, dict):
        return value.get("number") if value.get("set", True) else None
    return value


def _put_tasks(out: dict[str, TaskInfo], array_job, tasks: list[int], record: str, fields: dict) -> None:
    """out["<array_job>_<t>"] for each task of one record; a record of several tasks (a pending
    array lists 100,000s as one) gives them one shared TaskInfo, with the record's id."""
    if len(tasks) == 1:
        key = f"{array_job}_{tasks[0]}"
        out[key] = TaskInfo(id=key, **fields)
    elif tasks:
        out.update(zip(map(f"{array_job}_".__add__, map(str, tasks)), repeat(TaskInfo(id=record, **fields))))


def parse_squeue_json(text: str) -> dict[str, TaskInfo]:
    """Parse `squeue --json`; skip (not fail on) records that cannot be read."""
    out: dict[str, TaskInfo] = {}
    try:
        jobs = json.loads(text).get("jobs") or []
    except (json.JSONDecodeError, AttributeError):
        return out
    if not isinstance(jobs, list):
        return out
    for rec in jobs:
        try:
            state = _state_str(rec.get("job_state"))
            common = {
                "state": state, "reason": str(rec.get("state_reason") or ""),
                "exit_code": _exit_int(rec.get("exit_code")), "restarts": int(_num(rec.get("restart_cnt")) or 0),
                "source": "squeue", "log": str(rec.get("standard_output") or ""),
                "extra": {"dependency": rec.get("dependency") or "", "name": rec.get("name") or ""},
            }
            jid = int(_num(rec.get("job_id")))
            array_job = int(_num(rec.get("array_job_id")) or 0)
            task = _num(rec.get("array_task_id"))
            task = int(task) if task is not None else None
            if array_job:
                if task is not None and task != NO_VAL:
                    out[f"{array_job}_{task}"] = TaskInfo(id=f"{array_job}_{task}", **common)
                pending = str(rec.get("array_task_string") or "")
                if pending:
                    _put_tasks(out, array_job, expand_array(pending), f"{array_job}_[{pending}]", common)
                elif task is None or task == NO_VAL:
                    # An array that ended before its tasks were split out (e.g. cancelled while
                    # pending): this one record stands for every task not listed on its own.
                    out[f"{array_job}_*"] = TaskInfo(id=f"{array_job}_*", **common)
            else:
                out[str(jid)] = TaskInfo(id=str(jid), **common)
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return out


def parse_scontrol(text: str) -> dict[str, TaskInfo]:
    """Parse `scontrol show job -o` (one job per line, Key=Value fields)."""
    out: dict[str, TaskInfo] = {}
    for line in text.splitlines():
        try:
            fields = dict(kv.split("=", 1) for kv in re.findall(r"(\S+?=\S*)", line))
            if "JobId" not in fields:
                continue
            state = _state_str(fields.get("JobState"))
            exit_code = _exit_pair(fields.get("ExitCode", ""))
            common = {"state": state, "reason": fields.get("Reason", ""), "exit_code": exit_code,
                          "restarts": int(fields.get("Restarts", "0") or 0), "source": "scontrol",
                          "log": fields.get("StdOut", ""), "extra": {"dependency": fields.get("Dependency", "")}}
            if "ArrayJobId" in fields:
                tasks = fields.get("ArrayTaskId", "")
                if tasks in ("", str(NO_VAL)):
                    key = f"{fields['ArrayJobId']}_*"
                    out[key] = TaskInfo(id=key, **common)
                    continue
                array_job = fields["ArrayJobId"]
                _put_tasks(out, array_job, expand_array(tasks), f"{array_job}_[{tasks}]", common)
            else:
                out[fields["JobId"]] = TaskInfo(id=fields["JobId"], **common)
        except (ValueError, KeyError):
            continue
    return out


def parse_sacct(text: str) -> dict[str, TaskInfo]:
    """Parse `sacct -n -P -X -o JobID,State,ExitCode,Reason`."""
    out: dict[str, TaskInfo] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        try:
            jid, state, rc = parts[0], _state_str(parts[1]), parts[2]
            reason = parts[3] if len(parts) > 3 else ""
            exit_code = _exit_pair(rc)
            if "_[" in jid:  # pending array tasks: 12_[3-5%2]
                base, rng = jid.split("_[", 1)
                _put_tasks(out, base, expand_array(rng.rstrip("]")), jid,
                           {"state": state, "reason": reason, "exit_code": exit_code, "source": "sacct"})
            else:
                out[jid] = TaskInfo(id=jid, state=state, reason=reason, exit_code=exit_code, source="sacct")
        except ValueError:
            continue
    return out


def _base_ids(ids: list[str]) -> list[str]:
    return sorted({i.split("_", 1)[0] for i in ids}, key=int)


# What SLURM's tools print when the controller (or its config) cannot be reached: asking it
# again, per job, would only wait out the same retries.
_UNREACHABLE = ("did not answer within", "Unable to contact slurm controller", "Could not establish a configuration",
                "Socket timed out", "Connection refused", "No such file or directory")


def _unreachable(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == 124 or any(m in (proc.stderr or "") for m in _UNREACHABLE)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def parse_config_value(text: str, key: str) -> int | None:
    """An integer setting from `scontrol show config` ("MaxArraySize            = 1001")."""
    m = re.search(rf"(?m)^\s*{re.escape(key)}\s*=\s*(\d+)\s*$", text)
    return int(m.group(1)) if m else None




# ------------------------------------------------------------------------------ the tools
class Slurm:
    """This machine's SLURM client tools: the commands hpcffn sends to SLURM.

    Every command goes through `run` and every look-up of a tool through `which`, so a test's
    fake scheduler (tests/fake_slurm.py) replaces those two, or a whole command, and hands the
    object to submit, status, cancel and check instead of patching this module.
    """

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def tool(self, name: str) -> str:
        path = self.which(name)
        if path is None:
            raise SchedulerMissing(
                f"`{name}` is not on PATH: run this on a SLURM login node (or load the slurm module), "
                "or run the pipeline here with `hpcffn submit --local`"
            )
        return path

    def available(self) -> bool:
        """True when the SLURM client tools are installed here."""
        return self.which("sbatch") is not None

    def run(self, args: list[str], cwd: str | Path | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [self.tool(args[0]), *args[1:]]
        try:
            proc = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SchedulerNotAnswering(
                f"`{args[0]}` did not answer within {timeout:g} s: is slurmctld reachable? (`scontrol ping`)"
            ) from None
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().replace("\n", " ") or f"exit code {proc.returncode}"
            raise HpcffnError(f"`{' '.join(args[:3])} ...` failed: {msg}")
        return proc

    def ask(self, args: list[str]) -> subprocess.CompletedProcess:
        """A read-only query with the short timeout; no answer in time reads as a failed call (124)."""
        limit = query_timeout()
        try:
            return self.run(args, check=False, timeout=limit)
        except SchedulerNotAnswering:
            return subprocess.CompletedProcess(args, 124, "", f"`{args[0]}` did not answer within {limit:g} s")

    def sbatch(self, cmd: list[str], cwd: str | Path) -> str:
        """Run an sbatch command line from `sbatch_command`; return the new job id."""
        proc = self.run(cmd, cwd=cwd, check=False)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().replace("\n", " ")
            raise HpcffnError(
                f"sbatch refused {cmd[-1]}: {msg}; fix the script or the spec and re-run `hpcffn submit --resume`")
        return parse_parsable(proc.stdout)

    def test_only(self, cmd: list[str], cwd: str | Path) -> tuple[bool, str]:
        """Ask sbatch whether it would accept a command line (`--test-only`); nothing is queued."""
        args = [a for a in cmd if a != "--parsable"]
        args.insert(1, "--test-only")
        proc = self.run(args, cwd=cwd, check=False)
        return proc.returncode == 0, (proc.stderr + proc.stdout).strip()

    def scancel(self, ids: list[str]) -> None:
        """Cancel jobs/array tasks (unknown ids are ignored by scancel itself)."""
        if ids:
            self.run(["scancel", *ids])

    def array_limits(self) -> tuple[int | None, int | None]:
        """(MaxArraySize, MaxSubmitJobs of this user's association), None where SLURM does not say.

        MaxArraySize comes from `scontrol show config`; MaxSubmitJobs from sacctmgr (needs
        slurmdbd): the smallest limit set on the user's associations.
        """
        size = submit = None
        if self.which("scontrol"):
            proc = self.run(["scontrol", "show", "config"], check=False)
            if proc.returncode == 0:
                size = parse_config_value(proc.stdout, "MaxArraySize")
        if self.which("sacctmgr"):
            user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
            proc = self.run(["sacctmgr", "-n", "-P", "show", "assoc", f"where user={user}", "format=MaxSubmit"],
                            check=False)
            if proc.returncode == 0:
                values = [int(v) for v in proc.stdout.split() if v.strip().isdigit()]
                submit = min(values) if values else None
        return size, submit

    def query(self, ids: list[str], sources: tuple[str, ...] = ("squeue", "sacct", "scontrol"),
              problems: list[str] | None = None) -> dict[str, TaskInfo]:
        """States of the given job/task ids from squeue, then sacct, then scontrol for what is missing.

        Ids SLURM has forgotten are absent from the result (the caller falls back to markers).
        When no source answers at all (controller down, no slurm.conf), raise
        SchedulerNotAnswering instead: an empty answer would make every submitted job look
        forgotten, and `submit --resume` resubmit it. Every call has the short `query_timeout`;
        once the controller has not answered, it is not asked again (scontrol, per job).
        `problems` gets a line for each source that did not answer.
        """
        ids = [i for i in ids if i]
        if not ids:
            return {}
        # At 100,000 tiles there are 500,000 ids: each pass below is one lookup per id, no more.
        found: dict[str, TaskInfo] = {}
        answered, errors = False, []

        controller_down = False

        def heard(tool: str, proc: subprocess.CompletedProcess, forgotten: str | None = None) -> bool:
            nonlocal answered, controller_down
            ok = proc.returncode == 0 or (forgotten is not None and forgotten in proc.stderr)
            answered |= ok
            if not ok:
                errors.append(_last_line(proc))
                if problems is not None:
                    problems.append(f"the scheduler did not answer `{tool}` ({_last_line(proc)})")
                controller_down |= tool in ("squeue", "scontrol") and _unreachable(proc)
            return proc.returncode == 0

        if "squeue" in sources:
            proc = self.ask(["squeue", "--json"])
            if heard("squeue", proc):
                found = parse_squeue_json(proc.stdout)  # other users' jobs too: left out at the end
        missing = [i for i in ids if i not in found]
        if missing and "sacct" in sources and self.which("sacct"):
            proc = self.ask(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode,Reason",
                             "-j", ",".join(_base_ids(missing))])
            if heard("sacct", proc):
                for k, v in parse_sacct(proc.stdout).items():
                    found.setdefault(k, v)
        unknown = [i for i in missing if i not in found and f"{i.split('_', 1)[0]}_*" not in found]
        for base in _base_ids(unknown) if "scontrol" in sources else []:
            if controller_down:
                break
            proc = self.ask(["scontrol", "show", "job", "-o", base])
            if heard("scontrol", proc, forgotten="Invalid job id"):
                for k, v in parse_scontrol(proc.stdout).items():
                    found.setdefault(k, v)
        if not answered and errors:
            raise SchedulerNotAnswering(
                f"SLURM did not answer ({errors[0]}); is slurmctld reachable? (`scontrol ping`)")
        return _asked_only(found, ids, missing)


def _asked_only(found: dict[str, TaskInfo], ids: list[str], missing: list[str]) -> dict[str, TaskInfo]:
    """The records of `ids` alone, array tasks covered by a whole-array record ("12_*") included."""
    for i in missing:
        if i in found or "_" not in i:
            continue
        whole = found.get(f"{i.split('_', 1)[0]}_*")
        if whole is not None:
            found[i] = TaskInfo(**{**whole.__dict__, "id": i})
    want = set(ids)
    for k in [k for k in found if k not in want]:  # records of jobs not asked about
        del found[k]
    return found
