"""The shadowing trap: subproject folders never hide the installed libraries of the same name."""

from __future__ import annotations

import subprocess
import sys


def test_fasttext_library_is_the_installed_one(repo):
    code = "import fasttext, sys; print(fasttext.__file__); assert hasattr(fasttext, 'train_supervised')"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout


def test_subproject_folders_are_thin_entry_points(repo):
    from textclf.core.registry import all_families

    subprojects = {fam.subproject for fam in all_families().values() if fam.subproject}
    assert subprojects == {"fasttext", "allennlp", "bert_classification"}
    for folder in sorted(subprojects):
        assert (repo / folder / "train.py").exists(), f"{folder}/train.py missing"
        assert (repo / folder / "predict.py").exists(), f"{folder}/predict.py missing"
        assert not (repo / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow a library"
        py = [p.name for p in (repo / folder).glob("*.py")]
        assert sorted(py) == ["predict.py", "train.py"], f"{folder} holds more than entry points: {py}"
        for script in py:
            lines = [x for x in (repo / folder / script).read_text().splitlines() if x.strip() and not x.startswith((" ", '"""'))]
            assert len(lines) <= 4, f"{folder}/{script} is not thin: {lines}"


def test_family_code_lives_in_its_own_package(repo):
    """The top level keeps only what two or more families share; each family's own modules sit in families/<name>/."""
    top = {p.stem for p in (repo / "src" / "textclf").glob("*.py")}
    family_only = {"catalyst_callbacks", "losses", "distributed", "text_vocab", "embeddings", "fasttext_model", "lstm", "bert"}
    assert not top & family_only, f"family-only modules at the top level: {sorted(top & family_only)}"
    assert not (repo / "src" / "textclf" / "models").exists()
    for name in ("fasttext", "lstm", "bert"):
        assert (repo / "src" / "textclf" / "families" / name / "__init__.py").exists()
