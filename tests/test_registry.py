"""The family registry: built-ins, entry points, the train/tune commands it builds, progress and logging."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.data import read_labelled, write_labelled
from textclf.core.registry import all_families, get_family

TEXTCLF = [sys.executable, "-c", "from textclf.cli import main; main()"]


def run(args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def small(tweets, tmp_path_factory) -> dict[str, Path]:
    """300 training and 150 validation tweets as files."""
    root = tmp_path_factory.mktemp("small")
    write_labelled(root / "train.csv", read_labelled(tweets["train"]).subset(range(300)))
    write_labelled(root / "valid.csv", read_labelled(tweets["valid"]).subset(range(150)))
    return {"train": root / "train.csv", "valid": root / "valid.csv"}


def test_the_shipped_families_are_registered_with_their_parts():
    fams = all_families()
    builtins = ("fasttext", "lstm", "bert", "embeddings", "setfit")
    assert set(builtins) <= set(fams)
    for name in builtins:  # (other tests of this process may have registered families of their own)
        fam = fams[name]
        cls = fam.predictor_class()
        assert cls.kind == name
        assert callable(fam.train_fn())
        assert fam.config_path().name == "config.json" and fam.config_path().parent.name == name
    assert all(get_family(name).searchable for name in ("fasttext", "lstm", "bert", "embeddings", "setfit"))


def test_families_command_lists_kind_description_status_and_config(repo):
    result = CliRunner().invoke(cli, ["families", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["lstm"]["kind"] == "neural" and rows["lstm"]["installed"] is True
    assert rows["fasttext"]["config"] == str(repo / "src" / "textclf" / "families" / "fasttext" / "config.json")
    assert rows["fasttext"]["override"] is None  # the repository's config/ holds no family's override
    text = CliRunner().invoke(cli, ["families"]).output
    assert re.search(r"^bert\s+neural\s+Hugging Face encoder", text, re.M)
    assert "installed; config: " in text


def test_tune_refuses_a_family_without_a_search_space_and_an_unknown_name():
    from textclf.core.registry import Family, all_families, register_family

    register_family(Family(name="nosearch", fit="textclf.families.fasttext.model:fit", config={"model": {}},
                           predictor="textclf.families.fasttext.model:FastTextPredictor"))  # every built-in family has a space
    registered = all_families()  # the built-ins, plus plug-ins other tests of this process loaded
    searchable = ", ".join(name for name, fam in registered.items() if fam.searchable)
    assert searchable.startswith("bert, embeddings, fasttext, lstm, setfit")
    result = CliRunner().invoke(cli, ["tune", "nosearch", "--help"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == \
        f"Error: family 'nosearch' has no search space to tune; families with one: {searchable}"
    result = CliRunner().invoke(cli, ["train", "fasttxt", "--help"])
    assert result.exit_code == 2
    assert f"Error: unknown model family 'fasttxt'; known: {', '.join(registered)}" in result.output
    assert {"bert", "embeddings", "fasttext", "lstm", "setfit"} <= set(registered)
    assert "Traceback" not in result.output


EPFAM = '''
"""A prior-only family: predicts the training label frequencies (the smallest complete family)."""
import json
from pathlib import Path

import numpy as np

from textclf.core.predictor import Predictor
from textclf.core.registry import Family
from textclf.core.training import finish_run


class PriorPredictor(Predictor):
    kind = "epfam"

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        from textclf.core.meta import read_meta
        meta = meta or read_meta(model_dir)
        return cls(model_dir, meta, json.loads((Path(model_dir) / "prior.json").read_text()))

    def __init__(self, model_dir, meta, prior):
        super().__init__(model_dir, meta)
        self.prior = np.array(prior)

    def predict_proba(self, texts):
        return np.tile(self.prior, (len(texts), 1))


def train(cfg, splits, output_dir, resume=False):
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prior = [splits.train.labels.count(label) / len(splits.train) for label in splits.labels]
    (out / "prior.json").write_text(json.dumps(prior))
    finish_run(out, PriorPredictor(out, {"labels": splits.labels}, prior), splits, cfg)
    return out


FAMILY = Family(name="epfam", train=train, predictor=PriorPredictor, kind="baseline",
                description="class priors only, from an entry point",
                config={"seed": 1, "data": {"format": None, "text_column": "text", "label_column": "label", "reader": None}})
'''


@pytest.mark.slow  # pip-installs a package into a temporary site dir
def test_an_installed_package_registers_a_family_through_an_entry_point(tmp_path, small):
    """A pip-installed plug-in: a dist-info with a ``textclf_families`` entry point, nothing imported by hand."""
    dist = tmp_path / "textclf_epfam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: textclf-epfam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[textclf_families]\nepfam = epfam_pkg:FAMILY\n")
    (tmp_path / "epfam_pkg.py").write_text(EPFAM)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    listed = run([*TEXTCLF, "families", "--json"], env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["epfam"]["description"] == "class priors only, from an entry point"
    assert rows["epfam"]["config"] == "(in the plug-in)"
    out = tmp_path / "model"
    trained = run([*TEXTCLF, "train", "epfam", "--train_path", small["train"], "--valid_path", small["valid"],
                   "--output_dir", out], env=env)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((out / "meta.json").read_text())["kind"] == "epfam"
    predicted = run([*TEXTCLF, "predict", "--model_path", out, "--input_path", small["valid"], "--output_path",
                     tmp_path / "p.txt"], env=env)
    assert predicted.returncode == 0, predicted.stderr
    majority = max(set(read_labelled(small["train"]).labels), key=read_labelled(small["train"]).labels.count)
    assert (tmp_path / "p.txt").read_text().splitlines() == [majority] * 150


def test_a_search_reports_progress_per_trial(small, tmp_path):
    out = tmp_path / "ft"
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(small["train"]), "--valid_path",
                                      str(small["valid"]), "--output_dir", str(out), "--n_trials", "3",
                                      "--set", "search.space.epoch.high=10", "--set", "search.start_params=[]",
                                      "--set", "search.space.bucket.choices=[100000]"])
    assert result.exit_code == 0, result.output
    lines = (out / "progress.log").read_text().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, start=1):
        assert re.search(rf"search trial {i}/3 number={i - 1} state=complete value=0\.\d+ best=0\.\d+ elapsed \d+s eta \d+s$",
                         line), line


@pytest.mark.slow  # two LSTM trainings, each in a fresh Python process that imports torch and Lightning
def test_the_script_and_the_command_log_the_same_epoch_lines(repo, small, tmp_path):
    """Logging is configured in one place: `python allennlp/train.py` and `textclf train lstm` print the same lines."""
    common = ["--train_path", small["train"], "--valid_path", small["valid"], "--epochs", "2", "--device", "cpu",
              "--set", "model.embedding_dim=16", "--set", "model.hidden_size=16", "--set", "train.num_threads=1"]
    script = run([sys.executable, repo / "allennlp" / "train.py", *common, "--output_dir", tmp_path / "a"], cwd=repo)
    command = run([*TEXTCLF, "train", "lstm", *common, "--output_dir", tmp_path / "b"], cwd=repo)
    for proc in (script, command):
        assert proc.returncode == 0, proc.stderr
        epochs = re.findall(r"INFO textclf\.families\.lstm\.train: epoch (\d)/2: valid macro_f0\.5=", proc.stderr)
        assert epochs == ["1", "2"], proc.stderr[-2000:]
    progress = (tmp_path / "a" / "progress.log").read_text().splitlines()
    assert [re.search(r"epoch (\d)/2", line).group(1) for line in progress] == ["1", "2"]
