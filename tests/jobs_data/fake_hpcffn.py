"""A stand-in for `hpcffn stage train` in the requeue test: counts steps with a checkpoint file.

Usage (as the rendered scripts call hpcffn): fake_hpcffn.py stage train --plan P --group G.
Env FAKE_STEPS (total steps, default 40), FAKE_STEP_SECONDS (default 1). Each step is saved
to WORKDIR/train/<G>/ckpt.txt only on USR1/TERM or at the end, like a real checkpoint;
a signal makes it save and exit 75 (work remains), as docs/CONTRACTS.md asks of long stages.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

args = sys.argv[1:]
plan = Path(args[args.index("--plan") + 1])
group = args[args.index("--group") + 1]
ckpt = plan.parent / "train" / group / "ckpt.json"
ckpt.parent.mkdir(parents=True, exist_ok=True)
state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "runs": []}
start = state["step"]
state["runs"].append({"start_step": start, "job": os.environ.get("SLURM_JOB_ID"),
                      "restart": os.environ.get("SLURM_RESTART_COUNT")})
total = int(os.environ.get("FAKE_STEPS", "40"))
stop = {"sig": None}


def save():
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, ckpt)


def on_signal(signum, frame):
    stop["sig"] = signum


signal.signal(signal.SIGUSR1, on_signal)
signal.signal(signal.SIGTERM, on_signal)
print(f"fake train {group}: starting at step {start}", flush=True)
while state["step"] < total:
    if stop["sig"] is not None:
        state["runs"][-1]["signal"] = stop["sig"]
        save()
        print(f"fake train {group}: signal {stop['sig']} at step {state['step']}: checkpoint saved", flush=True)
        sys.exit(75)
    time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", "1")))
    state["step"] += 1
save()
# What status takes for a finished training (the checkpoint at max_steps) and the unit's marker.
max_steps = json.loads(plan.read_text())["ffn"]["training"]["max_steps"]
(ckpt.parent / f"ckpt-{max_steps}.index").touch()
fingerprint = plan.parent / "units" / f"train_{group}.fp"
done = plan.parent / "markers" / "train" / f"{group}.done"
done.parent.mkdir(parents=True, exist_ok=True)
done.write_text(json.dumps({"fingerprint": fingerprint.read_text().strip() if fingerprint.exists() else None}) + "\n")
print(f"fake train {group}: finished at step {state['step']}", flush=True)
