"""Small models by default and ensembles that never lose to their best member (issue 26).

fastText's ``search.max_model_mb`` (exact size, hash buckets lowered, or quantized to ``model.ftz``)
and ``textclf ensemble``'s size budget and ``auto`` rule (keep the best single member unless a
combination wins clearly out of fold), on real small models trained on the embedded tweets data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.config import load_config
from textclf.core.data import read_labelled, write_labelled
from textclf.core.loading import load_predictor
from textclf.core.registry import get_family, load_code
from textclf.core.training import load_splits
from textclf.services.runs import fit_family

MIB = 2**20
PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "tfidf_logreg.py"


def train_cli(tweets, out, *extra):
    args = ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path", str(tweets["valid"]),
            "--test_path", str(tweets["test"]), "--output_dir", str(out), "--no-track", *extra]
    return CliRunner().invoke(cli, [str(a) for a in args])


# --------------------------------------------------------------------------- fastText
def test_default_model_fits_20_mb_with_exact_size_and_fewer_buckets(tmp_path, tweets):
    out = tmp_path / "ft"
    result = train_cli(tweets, out, "--n_trials", "0")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    size = meta["size"]
    # dim 100 with 2,000,000 buckets would be a 768 MB model.bin: dim 25 and fewer buckets, the size predicted exactly
    assert size["action"] == "dim" and size["dim_from"] == 100 and size["bucket_from"] == 2_000_000
    assert size["max_model_mb"] == 20.0 and meta["params"]["dim"] == 25
    assert meta["model_file"] == "model.bin" and not (out / "model.ftz").exists()
    actual = (out / "model.bin").stat().st_size
    assert actual == size["estimated_bytes"] == size["bytes"] and 19 * MIB < actual <= 20 * MIB
    assert meta["model_mb"] == round(actual / MIB, 3)
    assert 150_000 < meta["params"]["bucket"] < 200_000 and meta["config"]["model"]["bucket"] == 2_000_000
    assert meta["metrics"]["test"]["macro_f1"] > 0.65  # fixed default params (real runs: 0.69-0.72, as unconstrained)


def test_no_bucket_when_no_ngram_uses_it_and_budget_null_is_unlimited():
    from collections import Counter

    from textclf.families.fasttext.size import bin_bytes, fit_params_to_budget

    counts = Counter({"__label__0": 3, "__label__1": 2, "good": 4, "bad": 1, "</s>": 5})
    params = {"dim": 10, "bucket": 2_000_000, "wordNgrams": 1, "minn": 0, "maxn": 0, "minCount": 2}
    fitted, record = fit_params_to_budget(counts, params, None)
    assert fitted["bucket"] == 0 and record["action"] == "fits" and record["max_model_mb"] is None
    # 92 bytes of headers; entries word\0 + int64 + int8 for 2 words (good, </s>; bad is under minCount) and 2 labels;
    # two matrix headers (17 bytes each); (2 words + 0 buckets) x 10 input and 2 labels x 10 output float32s
    assert record["estimated_bytes"] == bin_bytes(counts, fitted) == 92 + 2 * (4 + 10) + 2 * (10 + 10) + 34 + 4 * 10 * 4
    kept, record = fit_params_to_budget(counts, {**params, "wordNgrams": 2}, None)
    assert kept["bucket"] == 2_000_000 and record["action"] == "fits"
    # minn 2 with maxn 0 (the search draws them apart) is character 2-grams: they need the buckets
    kept, _ = fit_params_to_budget(counts, {**params, "minn": 2}, None)
    assert kept["bucket"] == 2_000_000
    gone, _ = fit_params_to_budget(counts, {**params, "maxn": 5}, None)  # minn 0: no character n-grams
    assert gone["bucket"] == 0


def test_char_ngrams_with_maxn_under_minn_train(tmp_path):
    """A search point with minn > 0 and maxn 0 trained with bucket 0 ("bucket must be > 0 when using subwords")."""
    from collections import Counter

    from textclf.families.fasttext.model import fit_params, train_model
    from textclf.families.fasttext.size import fit_params_to_budget

    train = tmp_path / "train.txt"
    train.write_text("".join(f"__label__{i % 2} {'good great fine' if i % 2 else 'bad awful poor'} text{i}\n"
                             for i in range(40)), encoding="utf-8")
    params = {"dim": 10, "bucket": 100_000, "wordNgrams": 1, "minn": 2, "maxn": 0, "epoch": 5, "lr": 0.5}
    fitted, _ = fit_params_to_budget(Counter(train.read_text().split()), params, None)
    assert fit_params(fitted)["minn"] == 2 and fit_params(fitted)["maxn"] == 2
    model = train_model(train, {**fitted, "thread": 1})  # the old bucket 0 failed here
    assert "<g" in model.get_subwords("goodness")[0]  # character 2-grams are in use


def test_a_large_vocabulary_lowers_dim_then_needs_quantization():
    from collections import Counter

    from textclf.families.fasttext.size import MB, MIN_BUCKETS, fit_params_to_budget

    counts = Counter({f"w{i:04d}": 1 for i in range(1000)} | {"__label__0": 1, "__label__1": 1, "</s>": 2})
    params = {"dim": 100, "bucket": 2_000_000, "wordNgrams": 2, "minCount": 1}
    # 1,001 words x 100 dims are 400 KB: at 8 MB dim goes to 25 first, then the buckets are lowered
    fitted, record = fit_params_to_budget(counts, params, 8 * MB)
    assert record["action"] == "dim" and fitted["dim"] == 25 and 80_000 < fitted["bucket"] < 8 * MB // 100 - 1003
    assert 8 * MB - 100 < record["estimated_bytes"] <= 8 * MB
    fitted, record = fit_params_to_budget(counts, {**params, "dim": 20}, 8 * MB)  # under 25 already: buckets only
    assert record["action"] == "bucket" and fitted["dim"] == 20 and "dim_from" not in record
    # 1 MB: 1,001 words + MIN_BUCKETS rows fit only at 23 dims (at 25: 9,300 buckets)
    fitted, record = fit_params_to_budget(counts, params, MB)
    assert record["action"] == "dim" and record["dim_from"] == 100 and fitted["dim"] == 23
    assert MIN_BUCKETS <= fitted["bucket"] and record["estimated_bytes"] <= MB
    _, record = fit_params_to_budget(counts, params, MB // 8)  # under 10 dims
    assert record["action"] == "quantize" and record["estimated_bytes"] > MB // 8


def test_max_model_mb_must_be_positive(tmp_path, tweets):
    result = train_cli(tweets, tmp_path / "bad", "--n_trials", "0", "--set", "search.max_model_mb=0")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("Error: search.max_model_mb: must be > 0 (MB), or null for no size "
                                                      "limit; got 0.0")


@pytest.mark.slow  # product quantization: 5-20 s on 2 cores
def test_quantized_model_stays_under_budget_and_loads_in_another_process(tmp_path, tweets):
    out = tmp_path / "q"
    # 12,977 words x 20 dims alone are 1 MB: no bucket count fits 0.5 MB, so the model is quantized
    result = train_cli(tweets, out, "--n_trials", "0", "--set", "search.max_model_mb=0.5", "--set", "model.dim=20")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    size = meta["size"]
    assert size["action"] == "quantize" and size["quantized"]["qnorm"] and size["quantized"]["retrain"]
    assert meta["model_file"] == "model.ftz" and not (out / "model.bin").exists()
    assert (out / "model.ftz").stat().st_size == size["bytes"] <= 0.5 * MIB and set(meta["files"]) == {"model.ftz"}
    assert meta["metrics"]["test"]["macro_f1"] > 0.65

    texts = read_labelled(tweets["test"]).texts
    here = load_predictor(out)
    script = ("import json, sys; import textclf; p = textclf.load_predictor(sys.argv[1]); texts = json.load(sys.stdin); "
              "print(json.dumps({'labels': p.predict(texts), 'proba': p.predict_proba(texts).tolist()}))")
    done = subprocess.run([sys.executable, "-c", script, str(out)], input=json.dumps(texts), capture_output=True,
                          text=True, check=True)
    other = json.loads(done.stdout)
    assert other["labels"] == here.predict(texts)
    np.testing.assert_array_equal(np.asarray(other["proba"]), here.predict_proba(texts))


# --------------------------------------------------------------------------- ensembles
@pytest.fixture(scope="module")
def members(tmp_path_factory, tweets) -> dict:
    """fastText (fixed small params) and the TF-IDF plug-in on the embedded tweets; a 120-row slice of valid."""
    root = tmp_path_factory.mktemp("small_ens")
    load_code(PLUGIN)
    out = {}
    for name, family, overrides in (("ft", "fasttext", ["search.n_trials=0", "model.epoch=10", "model.dim=25"]),
                                    ("tfidf", "tfidf_logreg", [])):
        cfg = load_config(family, overrides=overrides)
        splits = load_splits(str(tweets["train"]), str(tweets["valid"]), None, cfg["data"])
        fit_family(get_family(family), cfg, splits, str(root / name), False)
        out[name] = root / name
    valid = read_labelled(tweets["valid"])
    out["valid_120"] = root / "valid_120.csv"
    write_labelled(out["valid_120"], valid.subset(range(120)))
    return out


def ensemble(members, out, *extra):
    args = ["ensemble", "--model_path", members["ft"], "--model_path", members["tfidf"], "--output_dir", out, *extra]
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_auto_keeps_the_best_member_unless_combining_wins_clearly_and_records_why(members, tmp_path):
    out = tmp_path / "auto"
    result = ensemble(members, out, "--valid_path", members["valid_120"], "--cv", "4", "--bags", "5")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    auto = meta["ensemble_search"]["auto"]
    rule = auto["rule"]
    assert rule["rows"] == 120 and rule["confidence"] == 0.95 and "paired bootstrap" in rule["test"]
    assert set(rule["versus_single"]) == {"weighted", "stacking"}
    for name, e in rule["versus_single"].items():
        # 120 rows: a one-sided 95 % bound of a macro-F1 difference is some 0.03-0.08 below the observed gain
        assert e["rows"] == 120 and e["se"] > 0.01 and e["ci_low"] < e["gain"] and not e["clear_win"], (name, e)
        assert e["gain"] == pytest.approx(auto["candidates"][name]["cv_score"] - auto["candidates"]["single"]["cv_score"],
                                          abs=1e-6)
    assert rule["decision"] == auto["chosen"] == "single"
    assert rule["reason"].startswith("no combination beats the best single member clearly out of fold: weighted ")
    assert f"-> single ({rule['reason']})" in result.output
    # saved as the member best on these 120 rows, one-hot: it predicts exactly like that member
    alone = meta["ensemble_search"]["single"]
    assert meta["weights"] == [1.0 if i == int(np.argmax(alone)) else 0.0 for i in range(2)]


def test_paired_gain_is_the_f1_difference_and_its_bar_shrinks_with_more_rows():
    from sklearn.metrics import f1_score

    from textclf.services.compare.ensemble import choose_clear_winner, paired_gain

    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    base = np.where(rng.random(300) < 0.75, y, rng.integers(0, 3, 300))
    better = np.where(rng.random(300) < 0.5, y, base)  # fixes about half of base's errors
    small = paired_gain(y, better, base, 3)
    diff = f1_score(y, better, average="macro") - f1_score(y, base, average="macro")
    assert small["gain"] == pytest.approx(diff, abs=1e-6) and small["ci_low"] < small["gain"] and small["rows"] == 300
    big = paired_gain(np.tile(y, 4), np.tile(better, 4), np.tile(base, 4), 3)  # the same pattern on 4x the rows
    assert big["gain"] == pytest.approx(small["gain"], abs=1e-6)
    assert big["se"] == pytest.approx(small["se"] / 2, rel=0.2) and big["ci_low"] > small["ci_low"]
    same = paired_gain(y, base, base, 3)
    assert same == {"gain": 0.0, "ci_low": 0.0, "se": 0.0, "p_not_better": 1.0, "rows": 300}

    candidates = {"single": {"cv_score": 0.7, "oof": base}, "weighted": {"cv_score": 0.8, "oof": better},
                  "stacking": {"cv_score": None}}
    chosen, evidence = choose_clear_winner(candidates, y, 3, 1.0, 13)
    assert chosen == "weighted" == evidence["decision"] and evidence["versus_single"]["weighted"]["clear_win"]
    assert evidence["reason"].startswith("weighted beats the best single member out of fold by +")


@pytest.mark.slow  # builds ensembles under budgets (quick: the auto rule test)
def test_ensemble_size_budget_skips_the_weaker_member_or_refuses(members, tweets, tmp_path):
    sizes = {name: json.loads((members[name] / "meta.json").read_text()) for name in ("ft", "tfidf")}
    mb = {name: sum(r["bytes"] for r in m["files"].values()) / MIB for name, m in sizes.items()}
    budget = max(mb.values()) + 0.01  # room for either member, not for both
    out = tmp_path / "budget"
    result = ensemble(members, out, "--valid_path", tweets["valid"], "--method", "weighted", "--bags", "0",
                      "--max_model_mb", f"{budget:.4f}")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    size = meta["size"]
    [kept] = meta["members"]
    [skipped] = size["skipped"]
    assert {kept["name"], skipped["member"].split(" ")[0]} == {"ft", "tfidf"}
    assert f"skipped {skipped['member']} ({skipped['mb']:.1f} MB): the better members kept use" in result.output
    assert size["total_mb"] == pytest.approx(mb[kept["name"]], abs=1e-3) and meta["model_mb"] == size["total_mb"] <= budget
    assert meta["weights"] == [1.0] and kept["valid_score_alone"] >= skipped["valid_score_alone"]

    result = ensemble(members, tmp_path / "none", "--valid_path", tweets["valid"], "--max_model_mb", "0.001")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --max_model_mb 0.001: no member fits (the smallest, ")


@pytest.mark.slow  # trains three members on three rotations in benchmark subprocesses (about two minutes)
def test_bench_small_valid_rotations_pool_every_row_once(tweets, tmp_path, cache_dir):
    """bench_ensemble --small_valid --rotations: auto per rotation, scored on all rotations' test folds together."""
    from sklearn.metrics import f1_score

    root = tmp_path / "data"
    (root / "tiny").mkdir(parents=True)
    for split, n in (("train", 120), ("valid", 40), ("test", 40)):
        write_labelled(root / "tiny" / f"{split}.csv", read_labelled(tweets[split]).subset(range(n)))
    out, keep = tmp_path / "rotations.json", tmp_path / "keep"
    cmd = [sys.executable, str(PLUGIN.parents[2] / "benchmarks" / "bench_ensemble.py"), "--small_valid", "30",
           "--subsamples", "2", "--rotations", "3", "--datasets", "tiny", "--data_root", str(root), "--keep", str(keep),
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["rotations"] == 3
    result = doc["datasets"]["tiny"]
    assert [len(records) for records in result["members"].values()] == [3, 3, 3]
    # fastText's pooled test macro-F1, recomputed from the kept models and their rotations' test folds
    y, pred = [], []
    for r in range(3):
        test = read_labelled(keep / "tiny" / f"rotation{r}" / "test.csv")
        y += test.labels
        pred += load_predictor(keep / "tiny" / f"rotation{r}" / "fasttext").predict(test.texts)
    assert sorted(y) == sorted(x for s in ("train", "valid", "test") for x in read_labelled(root / "tiny" / f"{s}.csv").labels)
    fasttext = f1_score(y, pred, average="macro")
    for i, case in enumerate(result["cases"]):
        assert case["subsample"] == i and case["rows"] == 30 and case["n_test"] == 200
        assert [c["rotation"] for c in case["per_rotation"]] == [0, 1, 2]
        assert case["members_test_macro_f1"][0] == pytest.approx(fasttext, abs=1e-9)
        assert case["best_member_test_macro_f1"] == max(case["members_test_macro_f1"])
        assert case["gain"] == pytest.approx(case["test_macro_f1"] - case["best_member_test_macro_f1"], abs=1e-12)
        assert case["ok"] == (case["gain"] >= -0.002)
        assert sum(int(part.rsplit(" x", 1)[1]) for part in case["chosen"].split(" + ")) == 3
    assert doc["target"]["cases"] == 2 and "| tiny |" in doc["table_markdown"]
    # MiniLM encoded the 200 texts once: one cache entry for them and one per fold (with 3 rotations each split file
    # is one fold: train, valid and test of the rotations), nothing else; training and predicting only read them
    assert result["embedding_cache"]["texts"] == 200
    assert sorted(json.loads(p.read_text())["n"] for p in cache_dir.glob("*.json")) == [66, 67, 67, 200]
