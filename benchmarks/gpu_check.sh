#!/usr/bin/env bash
# The one GPU check of issue 14 (neural families at GPU speed), prepared to run as ONE command on a
# GPU machine with no network (Python 3.12, torch, transformers, lightning, sentence-transformers,
# scikit-learn; catalyst, accelerate 0.34.2 and MiniLM come from the bundle). Not run on the CPU.
#
# Before, on the machine with network, from the project root (builds .gpu/, ~55 MiB; see the script):
#     bash ../shared/tools/gpu-bundle.sh movie_review_sentences tweets_sentiment
#     bash benchmarks/gpu_bundle_extra.sh     # + fastText, skops, catalogue, psutil wheels (issue 26's student)
# Then one device call, from the project root, carrying the bundle:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600)
# Everything it measures is written under $OUT (the device's return folder; ./gpu_out without it):
#     gpu_check.log   this script's whole output           env.json     versions, GPU, resolved settings
#     bert_mr.json    bench_bert.py on movie_review_sentences (plain loop + textclf variants, table inside)
#     bert_tweets.json the default + plain loop on tweets_sentiment (if time is left)
#     lstm_gpu.json   one BiLSTM run on CUDA with precision auto (bf16 on Ampere+), per-device predict batch
#     frontier_gpu.json (issue 26) the fine-tuned MiniLM teacher's predict docs/s on the GPU, a cascade with a
#                     fastText student and that GPU teacher (macro-F1 and docs/s as ratios to the teacher), and
#                     chunked long-text prediction against truncation (benchmarks/gpu_frontier.py)
# Each step has its own timeout; the whole script stays under ~9 minutes so the 10-minute call
# limit is never reached. bench_bert.py writes its JSON after every variant, so a step killed by
# its timeout still returns what it finished. Targets (issue 14): default training rows/s >= 5x the
# plain loop on movie_review_sentences, test macro-F1 within 0.01 of batch 32; prediction >= 20,000 docs/s.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
step() { echo; echo "=== [$(elapsed)s] $*"; }

step "setup (.gpu bundle)"
if [ ! -f .gpu/setup.sh ]; then echo "no .gpu/setup.sh: build the bundle first (bash ../shared/tools/gpu-bundle.sh)"; exit 2; fi
# shellcheck disable=SC1091
source .gpu/setup.sh || { echo "bundle setup failed"; exit 2; }
DATA=${GPU_DATA:-$PWD/.gpu/data}
PY=python3

step "environment and resolved settings"
timeout -k 5 120 $PY - "$OUT/env.json" <<'PY' || echo "env probe failed (exit $?)"
import importlib, json, sys
info = {}
for mod in ("torch", "transformers", "accelerate", "catalyst", "lightning", "tokenizers", "click", "numpy", "textclf"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "?")
    except Exception as exc:  # noqa: BLE001
        info[mod] = f"MISSING: {exc}"
import torch
from textclf.core.precision import DeviceInfo, MemoryEstimate, predict_batch_size, resolve_checkpointing, resolve_precision
dev = DeviceInfo.of("cuda")
info["device"] = {"name": dev.name, "capability": dev.capability, "free_gib": round(dev.free_memory / 2**30, 1),
                  "total_gib": round(dev.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()}
prec = resolve_precision("auto", dev)
info["precision_auto"] = prec.as_dict()
from textclf.families.bert.model import load_encoder, resolve_model_name
enc = load_encoder(resolve_model_name("auto"))
for b in (32, 512, 4096):
    est = MemoryEstimate.for_encoder(enc, b, 128, prec.activation_bytes)
    info[f"checkpointing_auto_minilm_batch{b}"] = resolve_checkpointing("auto", dev, est).as_dict()
from textclf.families.bert.model import inference_bytes_per_row
info["predict_batch_auto"] = predict_batch_size(64, "auto", dev, inference_bytes_per_row(enc.config, 128, prec.activation_bytes))
json.dump(info, open(sys.argv[1], "w"), indent=1, default=str)
print(json.dumps(info, indent=1, default=str))
PY
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true

step "issue 26: GPU teacher, cascade with a GPU teacher, chunked long-text prediction (budget 200 s)"
timeout -k 10 200 $PY benchmarks/gpu_frontier.py --device cuda --data_root "$DATA" --dataset tweets_sentiment \
    --step_timeout 60 --output "$OUT/frontier_gpu.json" || echo "gpu_frontier ended with exit $?"

step "BERT bench, movie_review_sentences: plain loop vs textclf variants (budget 240 s)"
# --max_minutes stops starting new variants; the order is by priority (the targets first)
timeout -k 10 240 $PY benchmarks/bench_bert.py --device cuda --data_root "$DATA" --datasets movie_review_sentences \
    --variants plain,default,batch128,batch512,fp16_ckpt,compile --max_minutes 3.3 --output "$OUT/bert_mr.json" \
    || echo "bench_bert (movie_review_sentences) ended with exit $?"

step "LSTM on CUDA: precision auto, per-device prediction batch (budget 60 s)"
timeout -k 5 60 $PY - "$DATA" "$OUT/lstm_gpu.json" <<'PY' || echo "lstm check ended with exit $?"
import json, sys, tempfile, time
from pathlib import Path
from textclf.core.config import load_config
from textclf.families.lstm import train as lstm_train
from textclf.families.lstm.model import LSTMPredictor
from textclf.core.training import load_splits
d = Path(sys.argv[1]) / "movie_review_sentences"
cfg = load_config("lstm", None, ["device=cuda", "train.epochs=3", "train.patience=0"])
splits = load_splits(d / "train.csv", d / "valid.csv", d / "test.csv", cfg["data"])
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    meta = lstm_train.train_once(cfg, splits, tmp)
    wall = time.perf_counter() - t0
    pred = LSTMPredictor.load(tmp, device="cuda")
    texts = splits.test.texts
    pred.predict_proba(texts[:64])
    n, t0 = 0, time.perf_counter()
    while n < 20000:
        pred.predict_proba(texts)
        n += len(texts)
    out = {"train_wall_s": round(wall, 1), "precision": meta["training"]["precision"],
           "predict_batch_size": pred.batch_size, "predict_docs_per_s": round(n / (time.perf_counter() - t0)),
           "test_macro_f1": meta["metrics"]["test"]["macro_f1"]}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(out)
PY

left=$(( 500 - $(elapsed) ))
if [ "$left" -gt 90 ]; then
  step "BERT bench, tweets_sentiment: plain loop + default (budget ${left} s)"
  timeout -k 10 "$left" $PY benchmarks/bench_bert.py --device cuda --data_root "$DATA" --datasets tweets_sentiment \
      --variants plain,default --max_minutes "$(awk "BEGIN {print ($left - 60) / 60}")" --output "$OUT/bert_tweets.json" \
      || echo "bench_bert (tweets_sentiment) ended with exit $?"
else
  step "skipping tweets_sentiment: ${left} s left"
fi

step "done in $(elapsed) s; results:"
ls -la "$OUT"
for f in "$OUT"/bert_*.json; do
  [ -f "$f" ] && $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('table_markdown') or 'partial: ' + json.dumps({k: {v: r.get('rows_per_s') for v, r in x.get('variants', {}).items()} for k, x in d['datasets'].items()}))" "$f"
done
exit 0
