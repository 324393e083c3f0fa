"""Every built-in family and both example plug-ins pass the conformance kit (``textclf.testing.check_family``)."""

from __future__ import annotations

import pytest

from textclf.testing import check_family

EXAMPLES = "examples/plugins"

FAST = {
    "fasttext": ["model.epoch=5", "model.dim=10", "model.bucket=10000", "search.n_trials=0"],
    "embeddings": ["encoder.name=tfidf_svd"],
}
NEURAL = {
    "lstm": ["train.epochs=1", "model.hidden_size=16", "model.embedding_dim=16", "device=cpu"],
    "setfit": ["train.epochs=1", "head.epochs=3", "data.per_class=8", "pairs.per_text=1", "device=cpu", "encoder.max_length=16"],
}


@pytest.mark.parametrize("name", ["fasttext", pytest.param("embeddings", marks=pytest.mark.slow)])  # slow: ~10 s of TF-IDF+SVD
def test_fast_builtin_family_conforms(name, tmp_path):
    out = check_family(name, overrides=FAST[name], workdir=tmp_path)
    assert (out / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEURAL))
def test_neural_builtin_family_conforms(name, tmp_path):
    out = check_family(name, overrides=NEURAL[name], rows=200, workdir=tmp_path)
    assert (out / "meta.json").is_file()


#: BERT on the tiny random encoder of conftest (the shipped MiniLM took 86 s here; the contract is the same)
TINY_BERT = ["two_stage=false", "stage2.epochs=2", "stage2.lr=0.002", "model.max_length=32", "device=cpu",
             "train.progress=false"]


@pytest.mark.slow  # about 30 s on 2 busy cores (a fresh interpreter loads torch for check 5); was 86 s with MiniLM
def test_bert_conforms_on_a_tiny_encoder(tiny_bert, tmp_path):
    out = check_family("bert", overrides=[*TINY_BERT, f"model.model_name={tiny_bert}"], rows=200, workdir=tmp_path)
    assert (out / "meta.json").is_file()


@pytest.mark.parametrize("plugin", ["tfidf_logreg", pytest.param("svm_char", marks=pytest.mark.slow)])  # slow: a second plug-in
def test_example_plugin_conforms(plugin, repo, tmp_path):
    out = check_family(plugin, code=[repo / EXAMPLES / f"{plugin}.py"], workdir=tmp_path)
    assert (out / "plugin" / f"{plugin}.py").is_file()


def test_kit_catches_a_family_that_breaks_the_label_order(repo, tmp_path):
    """A plug-in whose predict_proba columns are reversed fails the label-order check with its name."""
    bad = tmp_path / "reversed.py"
    bad.write_text((repo / EXAMPLES / "svm_char.py").read_text().replace('"svm_char"', '"svm_rev"').replace(
        "class SvmCharPredictor(SklearnPredictor):", "class SvmCharPredictor(SklearnPredictor):\n"
        "    def predict_proba(self, texts):\n        return super().predict_proba(texts)[:, ::-1]\n"))
    with pytest.raises(AssertionError, match=r"^check_family: label order: on training texts it scores accuracy 0\.[0-2]"):
        check_family("svm_rev", code=[bad], workdir=tmp_path / "w")
