"""Neural families at GPU speed, checked on the CPU: precision/checkpointing/batch-size resolution per device,
the pre-tokenised bucketed data path, the token cache, the LR scaling rule, the one-line-per-epoch console,
and a --quick BERT benchmark with its plain-loop baseline.

GPUs are simulated by passing the device's properties (:class:`textclf.core.precision.DeviceInfo`) to the
resolvers; nothing else is mocked. Training runs use the tiny random BERT from conftest.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core import precision as P
from textclf.core.config import load_config
from textclf.core.data import read_labelled, write_labelled
from textclf.core.errors import ConfigError
from textclf.core.torch_common import scaled_lr
from textclf.families.bert.callbacks import EpochLineLogger
from textclf.families.bert.data import EncodedDataset, cached_encode, load_tokenizer, make_loader
from textclf.families.bert.distributed import WorldInfo
from textclf.families.bert.model import BertClassifier, BertPredictor, load_encoder
from textclf.families.bert.train import device_batch, stage_lr

CPU = P.DeviceInfo("cpu")
H200 = P.DeviceInfo("cuda", "NVIDIA H200", (9, 0), free_memory=139 * 2**30, total_memory=141 * 2**30)
V100 = P.DeviceInfo("cuda", "Tesla V100-SXM2-16GB", (7, 0), free_memory=15 * 2**30, total_memory=16 * 2**30)
MINILM = {"n_params": 22_713_216, "hidden_size": 384, "num_layers": 6, "num_heads": 12}
BERT_LARGE = {"n_params": 335_141_888, "hidden_size": 1024, "num_layers": 24, "num_heads": 16}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, tweets):
    d = tmp_path_factory.mktemp("speed_data")
    write_labelled(d / "train.csv", read_labelled(tweets["train"]).subset(range(160)))
    write_labelled(d / "valid.csv", read_labelled(tweets["valid"]).subset(range(60)))
    return {"train": d / "train.csv", "valid": d / "valid.csv"}


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert):
    return load_tokenizer(tiny_bert)


# --------------------------------------------------------------------------- precision


def test_precision_auto_per_device():
    cpu = P.resolve_precision("auto", CPU)
    assert (cpu.name, cpu.dtype, cpu.uses_scaler, cpu.accelerate, cpu.lightning) == ("fp32", None, False, "no", "32-true")
    hopper = P.resolve_precision("auto", H200)
    assert (hopper.name, hopper.dtype, hopper.uses_scaler, hopper.accelerate, hopper.lightning) == \
        ("bf16", torch.bfloat16, False, "bf16", "bf16-mixed")
    volta = P.resolve_precision("auto", V100)
    assert (volta.name, volta.dtype, volta.uses_scaler, volta.accelerate, volta.lightning) == \
        ("fp16", torch.float16, True, "fp16", "16-mixed")
    assert "V100" in volta.reason and "7.0" in volta.reason
    ampere = P.DeviceInfo("cuda", "A100", (8, 0), free_memory=2**34)
    assert P.resolve_precision(None, ampere).name == "bf16"
    assert P.resolve_precision("auto", P.DeviceInfo("mps")).name == "fp32"


def test_precision_explicit_settings():
    assert P.resolve_precision("fp32", H200).name == "fp32"
    assert P.resolve_precision("FP16", H200).name == "fp16"
    assert P.resolve_precision("bf16", H200).name == "bf16"
    assert P.resolve_precision("bf16", CPU).name == "bf16"  # CPU autocast supports bf16
    assert P.resolve_precision("fp16", CPU).name == "fp32"  # needs a GPU: fp32, as the old fp16 flag did
    with pytest.raises(ConfigError, match="no bf16"):
        P.resolve_precision("bf16", V100)
    with pytest.raises(ConfigError, match="choose one of auto, fp32, bf16, fp16"):
        P.resolve_precision("fp8", H200)
    with P.resolve_precision("bf16", CPU).autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with P.resolve_precision("auto", CPU).autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_fp16_alias_is_deprecated_and_warns_once():
    P._WARNED.discard("train.fp16")
    with pytest.warns(FutureWarning, match="train.fp16 is deprecated"):
        assert P.precision_setting({"precision": "auto", "fp16": True}) == "fp16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use stays quiet
        assert P.precision_setting({"precision": "auto", "fp16": False}) == "fp32"
        assert P.precision_setting({"precision": "bf16", "fp16": True}) == "bf16"  # the new key wins
        assert P.precision_setting({"precision": "auto", "fp16": None}) == "auto"
    cfg = load_config("bert", overrides=["train.fp16=true"])
    assert P.resolve_precision(P.precision_setting(cfg["train"]), CPU).name == "fp32"
    assert P.resolve_precision(P.precision_setting(cfg["train"]), V100).name == "fp16"


def test_bert_and_lstm_configs_default_to_auto(repo):
    bert = load_config("bert")
    assert bert["train"]["precision"] == "auto" and bert["model"]["gradient_checkpointing"] == "auto"
    assert bert["train"]["fp16"] is None and bert["model"]["compile"] is False
    assert bert["train"]["lr_scaling"] == "sqrt" and bert["train"]["base_batch_size"] == 32
    assert bert["predict"] == {"batch_size_cpu": 16, "batch_size_gpu": "auto", "precision": "auto"}
    smoke = load_config("bert", repo / "config" / "bert_smoke.json")
    assert smoke["train"]["batch_size"] == smoke["train"]["base_batch_size"] == 16  # smoke lr stays as tuned
    # old overrides keep working: true/false become the strings the resolver reads
    off = load_config("bert", overrides=["model.gradient_checkpointing=false"])["model"]["gradient_checkpointing"]
    assert P.resolve_checkpointing(off, H200).enabled is False
    lstm = load_config("lstm")
    assert lstm["train"]["precision"] == "auto" and lstm["train"]["num_threads"] == 1
    assert lstm["predict"] == {"num_threads": 1, "batch_size_cpu": 256, "batch_size_gpu": 2048}


# --------------------------------------------------------------------------- checkpointing and memory


def test_checkpointing_auto_per_device():
    est = P.MemoryEstimate(batch_size=32, seq_len=128, **MINILM)
    assert P.resolve_checkpointing("auto", CPU, est).enabled is False
    h200 = P.resolve_checkpointing("auto", H200, est)
    assert h200.enabled is False and h200.need_bytes < 2 * 2**30 and h200.free_bytes == H200.free_memory
    assert "GiB free" in h200.reason
    # a large encoder and batch on a 16 GB GPU: does not fit, so checkpointing goes on
    big = P.MemoryEstimate(batch_size=64, seq_len=512, activation_bytes=2, **BERT_LARGE)
    v100 = P.resolve_checkpointing("auto", V100, big)
    assert v100.enabled is True and v100.need_bytes > 0.8 * V100.free_memory
    assert big.training_bytes(checkpointing=True) < 0.8 * V100.free_memory < big.training_bytes()
    assert P.resolve_checkpointing("auto", P.DeviceInfo("cuda", "x", (8, 0)), big).enabled is False  # no memory info


def test_checkpointing_explicit_settings_are_obeyed_everywhere():
    for setting in (True, "true", "on", "1"):
        assert P.resolve_checkpointing(setting, CPU).enabled is True
        assert P.resolve_checkpointing(setting, H200).enabled is True
    for setting in (False, "false", "off", "0"):
        assert P.resolve_checkpointing(setting, V100, P.MemoryEstimate(batch_size=64, seq_len=512, **BERT_LARGE)).enabled is False
    with pytest.raises(ConfigError, match="choose auto, true or false"):
        P.resolve_checkpointing("sometimes", CPU)


def test_memory_estimate_matches_the_documented_formula(tiny_bert):
    encoder = load_encoder(tiny_bert)
    est = P.MemoryEstimate.for_encoder(encoder, batch_size=8, seq_len=16)
    n = sum(p.numel() for p in encoder.parameters())
    assert (est.n_params, est.hidden_size, est.num_layers, est.num_heads) == (n, 32, 2, 2)
    layer = 16 * 8 * 32 * (34 + 5 * 2 * 16 / 32) * 4 / 2
    assert est.training_bytes() == int(16 * n + 2 * layer)
    assert est.training_bytes(checkpointing=True) == int(16 * n + 2 * 16 * 8 * 32 * 4 + layer)


def test_predict_batch_size_per_device():
    assert P.predict_batch_size(64, "auto", CPU, 10**6) == 64
    assert P.predict_batch_size(64, "auto", H200, 2 * 10**6) == P.PREDICT_MAX_BATCH
    small = P.DeviceInfo("cuda", "small", (8, 6), free_memory=2**30)
    assert P.predict_batch_size(64, "auto", small, 2**20) == 256  # 0.25 GiB / 1 MiB
    assert P.predict_batch_size(64, "auto", P.DeviceInfo("cuda"), None) == 256
    assert P.predict_batch_size(64, "512", H200) == 512
    with pytest.raises(ConfigError, match="at least 1"):
        P.predict_batch_size(0, 512, CPU)


# --------------------------------------------------------------------------- data path


TEXTS = ["good", "a rather long and winding sentence about nothing at all, really", "bad movie", "",
         "ok", "the best film of the year, I loved every minute of it", "meh", "awful awful awful awful"]


def test_pretokenised_batch_gives_the_old_paths_loss(tiny_bert, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = BertClassifier(load_encoder(tiny_bert), 3).eval()
    targets = torch.tensor([i % 3 for i in range(len(TEXTS))])
    old = tiny_tokenizer(TEXTS, padding=True, truncation=True, max_length=12, return_tensors="pt")
    data, status = cached_encode(tiny_tokenizer, TEXTS, 12, tmp_path, "train")
    assert status == "miss"
    batch = data.with_targets(targets.tolist()).__getitems__(list(range(len(TEXTS))))
    assert torch.equal(batch["input_ids"], old["input_ids"])
    assert torch.equal(batch["attention_mask"], old["attention_mask"])
    with torch.no_grad():
        loss_old = F.cross_entropy(model(old["input_ids"], old["attention_mask"]), targets)
        loss_new = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["targets"])
    assert loss_new.item() == pytest.approx(loss_old.item(), abs=1e-6)


def test_bucketed_batches_never_mix_up_labels():
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, 1000, size=int(n)).tolist() for n in rng.integers(1, 40, size=203)]
    targets = [sum(r) % 5 for r in rows]  # a function of the text: any mix-up shows
    data = EncodedDataset(rows, targets, pad_id=0)
    sub = data.subset(list(range(200, 0, -3)))
    for ds, source in ((data, list(range(len(rows)))), (sub, list(range(200, 0, -3)))):
        for shuffle in (True, False):
            loader = make_loader(ds, 7, pad_id=0, shuffle=shuffle, seed=3)
            for epoch in (0, 1):
                loader.batch_sampler.set_epoch(epoch)
                seen = []
                for batch in loader:
                    lengths = batch["attention_mask"].sum(1)
                    assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the batch's longest only
                    for row, n, y, i in zip(batch["input_ids"], lengths, batch["targets"], batch["index"], strict=True):
                        original = rows[source[int(i)]]
                        assert row[: int(n)].tolist() == original and not row[int(n):].any()
                        assert int(y) == sum(original) % 5
                    seen += batch["index"].tolist()
                assert sorted(seen) == list(range(len(ds)))


def test_bucket_pool_sets_how_length_sorted_training_batches_are():
    """train.bucket_pool: 50 batches per length-sorted pool by default, 1 gives random batches."""
    lengths = list(range(64))  # an item's length is its index
    data = EncodedDataset([[1] * (n + 1) for n in lengths], [0] * 64, pad_id=0)
    pooled = make_loader(data, 8, pad_id=0, shuffle=True, seed=5).batch_sampler.batches()
    assert all(sorted(b) == list(range(min(b), min(b) + 8)) for b in pooled)  # one pool: runs of neighbouring lengths
    random = make_loader(data, 8, pad_id=0, shuffle=True, seed=5, pool_batches=1).batch_sampler.batches()
    perm = np.random.default_rng(5).permutation(64)
    assert sorted(map(sorted, random)) == sorted(sorted(perm[i : i + 8].tolist()) for i in range(0, 64, 8))
    assert sorted(map(sorted, random)) != sorted(map(sorted, pooled))


def test_token_cache_hit_and_miss(tiny_tokenizer, tmp_path):
    first, s1 = cached_encode(tiny_tokenizer, TEXTS, 16, tmp_path, "train")
    again, s2 = cached_encode(tiny_tokenizer, TEXTS, 16, tmp_path, "train")
    assert (s1, s2) == ("miss", "hit")
    assert np.array_equal(first.flat, again.flat) and np.array_equal(first.offsets, again.offsets)
    assert first.input_ids == tiny_tokenizer(TEXTS, truncation=True, max_length=16)["input_ids"]
    assert cached_encode(tiny_tokenizer, TEXTS, 8, tmp_path, "train")[1] == "miss"  # max_length is in the key
    assert cached_encode(tiny_tokenizer, [*TEXTS[:-1], "changed"], 16, tmp_path, "train")[1] == "miss"
    assert cached_encode(tiny_tokenizer, TEXTS, 16, None, "train")[1] == "off"
    files = sorted(tmp_path.glob("tokens_train_*.npz"))
    assert len(files) == 3 and not list(tmp_path.glob(".*.tmp"))
    files[0].write_bytes(b"not a zip")  # a broken cache file is re-made, not trusted
    statuses = {cached_encode(tiny_tokenizer, t, m, tmp_path, "train")[1]
                for t, m in ((TEXTS, 16), (TEXTS, 8), ([*TEXTS[:-1], "changed"], 16))}
    assert statuses == {"hit", "miss"}


def test_lr_scaling_rule():
    assert scaled_lr(5e-5, 128, 32, "linear") == pytest.approx(2e-4)
    assert scaled_lr(5e-5, 128, 32, "sqrt") == pytest.approx(1e-4)
    assert scaled_lr(5e-5, 512, 32, "sqrt") == pytest.approx(2e-4)
    assert scaled_lr(5e-5, 512, 32, "none") == 5e-5
    assert scaled_lr(5e-5, 32, 32, "sqrt") == 5e-5
    assert scaled_lr(1e-4, 8, 32, "sqrt") == pytest.approx(5e-5)
    with pytest.raises(ConfigError, match="none, linear, sqrt"):
        scaled_lr(1e-4, 8, 32, "cubic")
    gpu_cfg = load_config("bert", overrides=["train.batch_size_gpu=256"])
    assert device_batch(gpu_cfg, torch.device("cuda"))["train"]["batch_size"] == 256  # a GPU gets its own batch
    assert device_batch(gpu_cfg, torch.device("cpu"))["train"]["batch_size"] == 32
    assert stage_lr(device_batch(gpu_cfg, torch.device("cuda")), "stage2", WorldInfo()) == pytest.approx(5e-5 * math.sqrt(8))
    cfg = load_config("bert", overrides=["train.batch_size=64", "train.accumulation_steps=2", "train.lr_scaling=linear"])
    assert stage_lr(cfg, "stage2", WorldInfo(0, 0, 2)) == pytest.approx(5e-5 * 64 * 2 * 2 / 32)  # effective batch 256


# --------------------------------------------------------------------------- console, compile


def test_epoch_line_shows_main_metrics_to_four_digits():
    logger = EpochLineLogger("stage2_full", extra="weighted_f1")
    metrics = {"train": {"loss": 0.123456789, "accuracy": 0.9, "macro_f1": 0.8, "micro_f1": 0.9, "lr": 1e-5},
               "valid": {"loss": 0.3, "accuracy": 0.86666666, "macro_f1": 0.85123456, "macro_f0.5": 0.8,
                         "weighted_f1": 0.81, "weighted_f0.5": 0.82, "micro_f0.5": 0.8},
               "_epoch_": {}}
    line = logger.format(metrics, 2, 3, 41.25)
    assert line == ("stage2_full epoch 2/3: train loss 0.1235 accuracy 0.9000 macro_f1 0.8000 | valid loss 0.3000 "
                    "accuracy 0.8667 macro_f1 0.8512 macro_f0.5 0.8000 weighted_f1 0.8100 (41.2 s)")
    assert "micro" not in line and "lr" not in line


@pytest.mark.slow  # a BiLSTM training with a failing torch.compile
def test_compile_failure_falls_back_to_eager(tiny_bert, caplog):
    torch.manual_seed(0)
    model = BertClassifier(load_encoder(tiny_bert), 2).eval()
    ids, mask = torch.tensor([[101, 2204, 102]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        eager = model(ids, mask)

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    model.encoder.compile(backend=broken_backend, dynamic=True)
    model.compile_state = "pending"
    with torch.no_grad():
        out = model(ids, mask)
    assert model.compile_state == "failed" and "running it eagerly" in caplog.text
    assert torch.allclose(out, eager, atol=1e-6)


# --------------------------------------------------------------------------- training runs (tiny BERT, CPU)


def _train(data, out, model, *extra):
    args = ["train", "bert", "--train_path", str(data["train"]), "--valid_path", str(data["valid"]), "--output_dir", str(out),
            "--model_name", str(model), "--device", "cpu", "--one_stage", "--set", "model.max_length=24",
            "--set", "stage2.epochs=1", "--set", "stage2.lr=0.002", "--set", "train.progress=false", *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "meta.json").read_text()), result.output


def test_cpu_training_records_resolutions_and_reuses_tokens(small_data, tiny_bert, tmp_path):
    out = tmp_path / "model"
    meta, output = _train(small_data, out, tiny_bert)
    tr = meta["training"]
    assert tr["precision"]["name"] == "fp32" and tr["precision"]["setting"] == "auto" and tr["fp16"] is False
    assert tr["gradient_checkpointing"] == {"enabled": False, "setting": "auto", "reason": "auto: off on cpu",
                                            "need_bytes": None, "free_bytes": None}
    assert tr["token_cache"]["train"] == "miss" and tr["rows_trained"] == 160 and tr["rows_per_s"] > 0
    assert tr["lr_scaling"] == {"rule": "sqrt", "base_batch_size": 32, "batch_size": 32}
    assert meta["bert"]["predict"]["batch_size_cpu"] == 16 and tr["predict_batch_size"] == 16
    epoch_lines = [line for line in output.splitlines() if line.startswith("stage2_full epoch 1/1:")]
    assert len(epoch_lines) == 1 and "micro" not in epoch_lines[0] and "valid loss 0." in epoch_lines[0]
    assert "precision fp32 (auto: fp32 on cpu); gradient checkpointing off (auto: off on cpu)" in output
    again, _ = _train(small_data, out, tiny_bert)
    assert again["training"]["token_cache"]["train"] == again["training"]["token_cache"]["valid"] == "hit"
    assert again["metrics"]["valid"] == meta["metrics"]["valid"]  # same ids, same seed: same model


def test_gpu_code_paths_run_on_cpu(small_data, tiny_bert, tmp_path):
    """bf16 autocast through the accelerate engine, gradient checkpointing and a larger batch with the sqrt rule."""
    meta, _ = _train(small_data, tmp_path / "m", tiny_bert, "--set", "train.precision=bf16",
                     "--set", "model.gradient_checkpointing=true", "--set", "train.batch_size=64",
                     "--set", "predict.batch_size_cpu=8")
    tr = meta["training"]
    assert tr["precision"]["name"] == "bf16" and tr["gradient_checkpointing"]["enabled"] is True
    assert tr["stages"][0]["lr"] == pytest.approx(0.002 * math.sqrt(2)) and tr["stages"][0]["base_lr"] == 0.002
    assert tr["predict_batch_size"] == 8 and meta["metrics"]["valid"]["n"] == 60
    predictor = BertPredictor.load(tmp_path / "m", device="cpu")
    assert predictor.batch_size == 8 and predictor.precision.name == "fp32"


def test_lstm_precision_and_prediction_batch(small_data, tmp_path):
    from textclf.core.training import load_splits
    from textclf.families.lstm import model as lstm
    from textclf.families.lstm import train as lstm_train

    cfg = load_config("lstm", None, ["train.epochs=1", "model.embedding_dim=16", "model.hidden_size=16", "device=cpu",
                                     "train.num_threads=1", "train.precision=bf16"])
    assert lstm_train.training_precision(cfg, torch.device("cpu")).lightning == "bf16-mixed"
    assert lstm_train.training_precision(load_config("lstm"), torch.device("cpu")).lightning == "32-true"
    splits = load_splits(small_data["train"], small_data["valid"], None, cfg["data"])
    meta = lstm_train.train_once(cfg, splits, tmp_path / "lstm")
    assert meta["training"]["precision"]["name"] == "bf16" and meta["training"]["predict_batch_size"] == 256
    assert lstm.predict_batch(cfg, torch.device("cpu")) == 256
    assert lstm.predict_batch(cfg, torch.device("cuda")) == 2048
    assert lstm.predict_batch({"train": {"eval_batch_size": 100}}, torch.device("cuda")) == 100  # older models


# --------------------------------------------------------------------------- benchmark


@pytest.mark.slow  # the benchmark trains the tiny BERT four times (2 variants x 2 seeds) in a subprocess
def test_bench_bert_quick_with_plain_loop(repo, tiny_bert, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(repo / "benchmarks" / "bench_bert.py"), "--quick", "--datasets", "tweets_sentiment",
           "--data_root", str(repo / "data"), "--model_name", str(tiny_bert), "--threads", "1", "--variants", "plain,default",
           "--seeds", "3,4", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    variants = doc["datasets"]["tweets_sentiment"]["variants"]
    assert set(variants) == {"plain", "default"}
    plain, default = variants["plain"], variants["default"]
    assert plain["ratio_to_plain"] == 1.0 and plain["epochs"] == 2 and plain["rows_trained"] == 2 * 160
    assert default["ratio_to_plain"] == pytest.approx(default["rows_per_s"] / plain["rows_per_s"], rel=1e-2)
    assert default["precision"] == "fp32" and default["gradient_checkpointing"] is False
    for v in (plain, default):
        assert v["rows_per_s"] > 0 and v["predict_docs_per_s"] > 0 and v["test"]["n"] == 80 and v["threads"] == 1
        assert v["peak_gpu_mb"] is None
    assert "| tweets_sentiment | plain PyTorch loop" in proc.stdout and "ratio to plain" in doc["table_markdown"]
    # --seeds: one run per seed, test scores reported as the mean over seeds, the F1 delta compares means
    assert doc["settings"]["seeds"] == [3, 4]
    for v in (plain, default):
        assert [r["seed"] for r in v["seed_runs"]] == [3, 4] and v["n_seeds"] == 2 and len(v["rows_per_s_runs"]) == 2
        assert v["test_mean"]["macro_f1"] == pytest.approx(sum(r["macro_f1"] for r in v["seed_runs"]) / 2, abs=1e-4)
    assert default["f1_delta_to_plain"] == pytest.approx(default["test_mean"]["macro_f1"] - plain["test_mean"]["macro_f1"],
                                                         abs=2e-4)
    assert "(2 seeds)" in doc["table_markdown"]


@pytest.mark.slow  # the benchmark trains the tiny BERT four times (one stage and two, 2 seeds) in subprocesses
def test_bench_bert_recipe_reports_one_two_and_auto_and_resumes(repo, tiny_bert, tmp_path):
    out = tmp_path / "recipe.json"
    cmd = [sys.executable, str(repo / "benchmarks" / "bench_bert.py"), "--recipe", "--quick", "--datasets", "tweets_sentiment",
           "--data_root", str(repo / "data"), "--model_name", str(tiny_bert), "--threads", "1", "--seeds", "3,4",
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    ds = doc["datasets"]["tweets_sentiment"]
    one, two = ds["variants"]["one_stage"], ds["variants"]["two_stage_focal"]
    # --quick trains 1 + 1 epochs in two stages, so the one-stage variant trains 2 epochs on all 160 rows
    assert [s["epochs"] for s in one["stages"]] == [2] and [s["name"] for s in two["stages"]] == ["stage1_balanced", "stage2_full"]
    assert one["rows_trained"] == 2 * 160
    # the embedded tweets are 69 % positive: the balanced downsample leaves out 25-50 %, so auto runs one stage
    plan = ds["auto_plans"]["3"]
    assert plan["two_stage"] is False and 0.25 < plan["dropped_share"] < 0.5
    r = doc["recipe"]["datasets"]["tweets_sentiment"]
    assert r["auto"] == r["one_stage"] and r["auto_two_stage"] == [False] and r["seeds"] == [3, 4]
    assert r["two_minus_one_per_seed"] == [round(t["macro_f1"] - o["macro_f1"], 4)
                                           for o, t in zip(one["seed_runs"], two["seed_runs"], strict=True)]
    assert doc["recipe"]["mean_over_datasets"]["auto"] == r["one_stage"]["mean"]
    assert "| tweets_sentiment | " in doc["table_markdown"] and "| **mean of 1 datasets** |" in doc["table_markdown"]
    # --resume with the same settings trains nothing again and keeps the results
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("done in the earlier run (--resume)") == 4 and "FAILED" not in log
    assert json.loads(out.read_text())["recipe"]["datasets"] == doc["recipe"]["datasets"]
