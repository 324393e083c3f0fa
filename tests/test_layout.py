"""The shadowing trap: subproject folders never hide the installed libraries of the same name."""

from __future__ import annotations

import subprocess
import sys


def test_fasttext_library_is_the_installed_one(repo):
    code = "import fasttext, sys; print(fasttext.__file__); assert hasattr(fasttext, 'train_supervised')"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout


def test_subproject_folders_are_not_packages(repo):
    for folder in ("fasttext", "allennlp", "bert_classification"):
        assert (repo / folder / "train.py").exists() or folder != "fasttext"
        assert not (repo / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow a library"
