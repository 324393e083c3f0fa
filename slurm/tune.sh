#!/usr/bin/env bash
# Distributed Optuna on SLURM: N workers (one job array) on one study, then one refit job.
#
#   slurm/tune.sh fasttext N_WORKERS --train_path ... --valid_path ... --output_dir models/fasttext \
#       --n_trials 40 [--storage models/fasttext/study.journal | postgresql://...] [--set k=v ...]
#   slurm/tune.sh allennlp N_WORKERS ...same flags...
#
# Workers:  python fasttext/train.py ARGS --no-refit      (allennlp: textclf tune lstm ARGS --no-refit)
# Refit:    python <family>/train.py ARGS                 (--dependency=afterok:<array>, cancelled if a worker fails)
# Env: SBATCH_OPTS  extra sbatch options for all jobs (partition, account, time, memory, cpus ...)
#      LOG_DIR      where the job logs go (default slurm-logs)
#      TEXTCLF_PYTHON  the python on the compute nodes (default .venv/bin/python, else python)
# Prints the job ids and log paths; the last line is `array_job=ID refit_job=ID`.
set -euo pipefail
cd "$(dirname "$0")/.."
family=${1:?usage: $0 fasttext|allennlp N_WORKERS TRAIN_ARGS...}
n=${2:?usage: $0 fasttext|allennlp N_WORKERS TRAIN_ARGS...}
shift 2
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "tune.sh: N_WORKERS must be a positive integer, got '$n'" >&2; exit 2; }
[[ " $* " == *" --n_trials "* ]] || { echo "tune.sh: pass --n_trials N (the study's total)" >&2; exit 2; }
py=${TEXTCLF_PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
case $family in
  fasttext) worker=("$py" fasttext/train.py) ;;
  allennlp) worker=("$py" -c "from textclf.cli import main; main()" tune lstm) ;;
  *) echo "tune.sh: family must be fasttext or allennlp, got '$family'" >&2; exit 2 ;;
esac
log_dir=${LOG_DIR:-slurm-logs}
mkdir -p "$log_dir"
# shellcheck disable=SC2206
opts=(${SBATCH_OPTS:-})

array=$(sbatch --parsable "${opts[@]}" --array=0-$((n - 1)) --job-name="textclf-$family-worker" \
  --output="$log_dir/%x-%A_%a.out" slurm/optuna_worker.sbatch "${worker[@]}" "$@" --no-refit)
array=${array%%;*}
refit=$(sbatch --parsable "${opts[@]}" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --job-name="textclf-$family-refit" --output="$log_dir/%x-%j.out" \
  slurm/refit.sbatch "$py" "$family/train.py" "$@")
refit=${refit%%;*}
echo "submitted $n $family workers: array job $array, logs $log_dir/textclf-$family-worker-${array}_<task>.out"
echo "submitted the refit (runs after every worker succeeded): job $refit, log $log_dir/textclf-$family-refit-$refit.out"
echo "follow with: squeue -j $array,$refit   |   slurm/wait.sh $array $refit"
echo "array_job=$array refit_job=$refit"
