#!/usr/bin/env bash
# Distributed Optuna on SLURM: N workers (one job array) on one study, then one refit job.
#
#   slurm/tune.sh FAMILY N_WORKERS --train_path ... --valid_path ... --output_dir models/fasttext \
#       --n_trials 40 [--storage models/fasttext/study.journal | postgresql://...] [--set k=v ...]
#   CODE=examples/plugins/tfidf_logreg.py slurm/tune.sh tfidf_logreg 4 ...same flags...
#
# FAMILY: any registered family with a search space (`textclf families`), or its subproject folder
# (fasttext, allennlp); a plug-in's family when CODE names the file that registers it.
# Workers:  textclf tune [--code CODE] FAMILY ARGS --no-refit   (one array task each, slurm/optuna_worker.sbatch)
# Refit:    textclf tune [--code CODE] FAMILY ARGS              (--dependency=afterok:<array>, cancelled if a worker
#           fails; the study already holds --n_trials trials, so it only refits the best and saves the model)
# Env: CODE            a plug-in file, passed on as --code to every job (made absolute here)
#      SBATCH_OPTS     extra sbatch options for all jobs (partition, account, time, memory, cpus ...)
#      LOG_DIR         where the job logs go (default slurm-logs)
#      TEXTCLF_PYTHON  the python on the compute nodes (default .venv/bin/python, else python)
# Prints the job ids and log paths; the last line is `array_job=ID refit_job=ID`.
set -euo pipefail
usage="usage: [CODE=plugin.py] $0 FAMILY N_WORKERS TRAIN_ARGS... (FAMILY: a searchable family, see textclf families)"
name=${1:?$usage}
n=${2:?$usage}
shift 2
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "tune.sh: N_WORKERS must be a positive integer, got '$n'" >&2; exit 2; }
[[ " $* " == *" --n_trials "* ]] || { echo "tune.sh: pass --n_trials N (the study's total)" >&2; exit 2; }
code=()
if [ -n "${CODE:-}" ]; then
  [ -f "$CODE" ] || { echo "tune.sh: CODE=$CODE: file not found" >&2; exit 2; }
  code=(--code "$(cd "$(dirname "$CODE")" && pwd)/$(basename "$CODE")")
fi
cd "$(dirname "$0")/.."
py=${TEXTCLF_PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
# the registry says which family NAME is and whether it can be tuned (one line with the known ones if not)
family=$("$py" -m textclf.cli.container family --searchable "${code[@]}" "$name")
# the textclf command: the console script beside that python, else the same through python -c
textclf=("$(dirname "$py")/textclf")
[ -x "${textclf[0]}" ] || textclf=("$py" -c 'import sys; from textclf.cli import cli; sys.exit(cli(prog_name="textclf"))')
log_dir=${LOG_DIR:-slurm-logs}
mkdir -p "$log_dir"
# shellcheck disable=SC2206
opts=(${SBATCH_OPTS:-})

# job names keep the name as given (textclf-allennlp-worker for allennlp), so logs stay where they were
array=$(sbatch --parsable "${opts[@]}" --array=0-$((n - 1)) --job-name="textclf-$name-worker" \
  --output="$log_dir/%x-%A_%a.out" slurm/optuna_worker.sbatch "${textclf[@]}" tune "${code[@]}" "$family" "$@" --no-refit)
array=${array%%;*}
refit=$(sbatch --parsable "${opts[@]}" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --job-name="textclf-$name-refit" --output="$log_dir/%x-%j.out" \
  slurm/refit.sbatch "${textclf[@]}" tune "${code[@]}" "$family" "$@")
refit=${refit%%;*}
echo "submitted $n $family workers: array job $array, logs $log_dir/textclf-$name-worker-${array}_<task>.out"
echo "submitted the refit (runs after every worker succeeded): job $refit, log $log_dir/textclf-$name-refit-$refit.out"
echo "follow with: squeue -j $array,$refit   |   slurm/wait.sh $array $refit"
echo "array_job=$array refit_job=$refit"
