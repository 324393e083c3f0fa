"""Models trained before the layered package (v1 module paths) still load and predict the same labels.

The tfidf_logreg model (and the ensemble holding it) carries plug-in code and a joblib pickle: they
load only with consent (``--trust-code``, ``trust_code=True``), and are refused with one line without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from textclf.core.loading import load_predictor
from textclf.core.predictor import predict_file

MODELS = ["fasttext", "tfidf_logreg", "lstm", "ensemble"]
#: the v1 models that carry code (a plug-in file; its model is a joblib pickle)
NEED_TRUST = {"tfidf_logreg", "ensemble"}


@pytest.fixture()
def v1(repo, tmp_path):
    """A private copy of the fixtures (loading a plug-in model may not write into the repository)."""
    import shutil

    return shutil.copytree(repo / "tests" / "fixtures" / "v1_models", tmp_path / "v1")


@pytest.mark.parametrize("name", MODELS)
def test_a_v1_model_predicts_what_it_predicted_then(v1, name, tmp_path):
    out = tmp_path / f"{name}.jsonl"
    assert predict_file(load_predictor(v1 / name, trust_code=name in NEED_TRUST), v1 / "texts.txt", out) == 60
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in (v1 / f"{name}.expected.jsonl").read_text().splitlines()]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    labels = list(want[0]["probabilities"])
    np.testing.assert_allclose([[g["probabilities"][k] for k in labels] for g in got],
                               [[w["probabilities"][k] for k in labels] for w in want], atol=1e-6)


@pytest.mark.parametrize("name", sorted(NEED_TRUST))
def test_a_v1_plugin_model_needs_trust_code_and_imports_the_old_module_paths(v1, name):
    """Refused (one line, exit 2, nothing written) without --trust-code; with it, the plug-in copy inside the v1
    model imports textclf.training, textclf.tuning, ... (the aliases serve them) and predicts the v1 labels."""
    code = (v1 / "tfidf_logreg" / "plugin" / "tfidf_logreg.py").read_text()
    assert "from textclf.training import" in code or "textclf.training" in code
    plugin = v1 / name / ("members/1_tfidf_logreg" if name == "ensemble" else "") / "plugin" / "tfidf_logreg.py"
    cli = [sys.executable, "-c", "from textclf.cli import main; main()"]
    args = ["predict", "--model_path", v1 / name, "--input_path", v1 / "texts.txt", "--output_path", v1 / "out.txt"]
    env = {k: v for k, v in os.environ.items() if k != "TEXTCLF_TRUST_CODE"}
    refused = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and not (v1 / "out.txt").exists()
    assert refused.stderr.strip().splitlines() == [
        f"Error: {plugin}: loading this model would import the plug-in code in this file, which can run arbitrary "
        "code; if you trust the model directory, pass --trust-code (or set TEXTCLF_TRUST_CODE=1, or trust_code=True "
        "in Python)"]
    done = subprocess.run([*cli, *map(str, [*args, "--trust-code"])], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    want = [json.loads(line)["label"] for line in (v1 / f"{name}.expected.jsonl").read_text().splitlines()]
    assert (v1 / "out.txt").read_text().splitlines() == want


def test_old_module_paths_are_the_new_modules():
    import textclf.registry
    import textclf.tracking

    import textclf.core.registry
    import textclf.services.tracking

    assert textclf.registry is textclf.core.registry and textclf.tracking is textclf.services.tracking
