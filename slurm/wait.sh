#!/usr/bin/env bash
# Wait for SLURM jobs (array jobs too) without accounting, then exit with their status:
# 0 when every task COMPLETED, else the largest exit code (1 for CANCELLED/TIMEOUT/NODE_FAIL with code 0).
#   slurm/wait.sh JOBID [JOBID...]      env: WAIT_TIMEOUT seconds (default: none), POLL (0.5 s)
# `sbatch --wait` works too but checks after 2 s, 10 s, ... (slow for short jobs); this polls squeue.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 JOBID [JOBID...]" >&2; exit 2; }
poll=${POLL:-0.5}
start=$SECONDS
worst=0
for j in "$@"; do
  while squeue -h -j "$j" 2>/dev/null | grep -q .; do
    if [ -n "${WAIT_TIMEOUT:-}" ] && [ $((SECONDS - start)) -ge "$WAIT_TIMEOUT" ]; then
      echo "wait: job $j still queued/running after ${WAIT_TIMEOUT} s" >&2; exit 124
    fi
    sleep "$poll"
  done
  # one line per job (per array task); finished jobs stay visible for MinJobAge (300 s by default)
  info=$(scontrol show job -o "$j" 2>/dev/null) || { echo "wait: job $j unknown (finished too long ago?)" >&2; exit 1; }
  states=$(grep -oP 'JobState=\K[A-Z_]+' <<<"$info" | sort | uniq -c | awk '{printf "%s%s x%s", (NR>1?", ":""), $2, $1}')
  ec=$(grep -oP ' ExitCode=\K[0-9]+' <<<"$info" | sort -n | tail -1)
  echo "job $j: $states (max exit code ${ec:-?})" >&2
  if grep -q 'JobState=' <<<"$info" && ! grep -oP 'JobState=\K[A-Z_]+' <<<"$info" | grep -qv '^COMPLETED$'; then
    continue
  fi
  code=${ec:-1}; [ "$code" -eq 0 ] && code=1
  [ "$code" -gt "$worst" ] && worst=$code
done
exit "$worst"
