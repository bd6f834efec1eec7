#!/usr/bin/env bash
# Stop the daemons tests/slurm/start.sh started in STATE_DIR, by their recorded pids only.
# Usage: tests/slurm/stop.sh STATE_DIR [--purge]   (--purge also deletes STATE_DIR)
set -uo pipefail
state="${1:?usage: stop.sh STATE_DIR [--purge]}"
[ -d "$state/run" ] || { echo "stop.sh: $state is not a test SLURM state dir" >&2; exit 1; }

stop_pid() {
  local name="$1" pidfile="$state/run/$1.pid" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  case "$pid" in ''|*[!0-9]*) return 0 ;; esac
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "stop.sh: $name ($pid) did not stop within 15 s of TERM; sending KILL" >&2
  kill -9 "$pid" 2>/dev/null || true
}

stop_pid slurmd
stop_pid slurmctld
stop_pid slurmdbd
stop_pid mariadbd
stop_pid munged
if [ "${2:-}" = "--purge" ]; then
  rm -rf -- "$state"
fi
