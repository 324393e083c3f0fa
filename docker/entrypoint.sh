#!/bin/sh
# Entry point of every textclf image.
#
#   <image> python fasttext/train.py --train_path ... --output_dir ...   runs that command (any command)
#   <image> train [extra flags]                                          the family's train command, built
#                                                                        from the seed's environment variables:
#     TEXTCLF_FAMILY  fasttext | allennlp | bert_classification (set by each Dockerfile)
#     DATA_DIR        folder with train.csv, valid.csv [, test.csv]              (default /data)
#     OUTPUT_DIR      model directory                                            (default /models/<family>)
#     BATCH_SIZE      -> --batch_size                      (allennlp, bert_classification)
#     EPOCHS          -> --epochs (allennlp), --set stage2.epochs=N (bert_classification)
#     N_TRIALS        -> --n_trials                        (fasttext, allennlp)
#     CUDA_DEVICES    -> CUDA_VISIBLE_DEVICES, e.g. "0,1" (the seed's name for it)
#
# The command it runs is printed first, so it can be pasted on the host unchanged.
set -eu

if [ -n "${CUDA_DEVICES:-}" ]; then
  CUDA_VISIBLE_DEVICES=$CUDA_DEVICES
  export CUDA_VISIBLE_DEVICES
fi

if [ "${1:-}" = "train" ]; then
  shift
  family=${TEXTCLF_FAMILY:?TEXTCLF_FAMILY is not set: run a command instead, e.g. python fasttext/train.py --help}
  data=${DATA_DIR:-/data}
  out=${OUTPUT_DIR:-/models/$family}
  for split in train valid; do
    if [ ! -f "$data/$split.csv" ]; then
      echo "entrypoint: $data/$split.csv not found; mount the data folder, e.g. -v \$PWD/data/tweets_sentiment:/data:ro" >&2
      exit 2
    fi
  done
  set -- --train_path "$data/train.csv" --valid_path "$data/valid.csv" --output_dir "$out" "$@"
  if [ -f "$data/test.csv" ]; then set -- --test_path "$data/test.csv" "$@"; fi
  case $family in
    fasttext)
      if [ -n "${N_TRIALS:-}" ]; then set -- "$@" --n_trials "$N_TRIALS"; fi ;;
    allennlp)
      if [ -n "${BATCH_SIZE:-}" ]; then set -- "$@" --batch_size "$BATCH_SIZE"; fi
      if [ -n "${EPOCHS:-}" ]; then set -- "$@" --epochs "$EPOCHS"; fi
      if [ -n "${N_TRIALS:-}" ]; then set -- "$@" --n_trials "$N_TRIALS"; fi ;;
    bert_classification)
      if [ -n "${BATCH_SIZE:-}" ]; then set -- "$@" --batch_size "$BATCH_SIZE"; fi
      if [ -n "${EPOCHS:-}" ]; then set -- "$@" --set "stage2.epochs=$EPOCHS"; fi ;;
    *)
      echo "entrypoint: unknown TEXTCLF_FAMILY=$family" >&2; exit 2 ;;
  esac
  set -- python "$family/train.py" "$@"
fi

if [ "$#" -eq 0 ]; then
  set -- python "${TEXTCLF_FAMILY:-fasttext}/train.py" --help
fi
echo "+ $*" >&2
exec "$@"
