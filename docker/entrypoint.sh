#!/bin/sh
# Entry point of every textclf image (docker/Dockerfile).
#
#   <image> train [FLAGS...]   the family's train command, built from the registry and the environment by
#                              `python -m textclf.cli.container train` (see that module):
#     TEXTCLF_FAMILY  the image's family (set at build time: --build-arg FAMILY=...)
#     DATA_DIR        folder with train.csv, valid.csv [, test.csv]                     (default /data)
#     OUTPUT_DIR      model directory                                                   (default /models/<family>)
#     CODE            a plug-in file (mounted), passed on as `textclf --code CODE ...`; with
#                     TEXTCLF_FAMILY=<its family> it trains a family the image does not ship
#     the family's own variables (`Family.env`): BATCH_SIZE, EPOCHS, N_TRIALS, ... -> --set KEY=VALUE
#   <image> tune [FLAGS...]    the same through `textclf tune <family>` (an Optuna search, then the refit)
#   <image> serve [FLAGS...]   `textclf serve` of MODEL_DIR (default /models/<family>) on 0.0.0.0:PORT (default 8000):
#                              publish it with -p 127.0.0.1:8000:8000; TEXTCLF_API_KEY requires a key; CODE as above.
#                              The image's HEALTHCHECK asks its /health (python -m textclf.services.serving.healthcheck)
#   <image> COMMAND [ARGS...]  any other command, e.g. python fasttext/predict.py --model_path /models/fasttext ...
#
#   CUDA_DEVICES -> CUDA_VISIBLE_DEVICES, e.g. "0,1" (the original repository's name for it)
#
# The command is printed first (`+ ...` on stderr), so it can be pasted on the host unchanged.
set -eu

if [ -n "${CUDA_DEVICES:-}" ]; then
  CUDA_VISIBLE_DEVICES=$CUDA_DEVICES
  export CUDA_VISIBLE_DEVICES
fi

case "${1:-}" in
  train | tune) exec python -m textclf.cli.container "$@" ;;
  serve)
    shift
    # inside a container the API must listen on all interfaces to be published; -p 127.0.0.1:... keeps it local
    set -- textclf serve ${CODE:+--code "$CODE"} --model_path "${MODEL_DIR:-/models/${TEXTCLF_FAMILY:-model}}" \
      --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
    ;;
  "") set -- python -m textclf.cli.container --help ;;
esac
echo "+ $*" >&2
exec "$@"
