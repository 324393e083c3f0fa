"""The shadowing trap: subproject folders never hide the installed libraries of the same name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest


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


@pytest.mark.slow
def test_the_wheel_ships_each_family_config_and_reads_the_users_override(repo, tmp_path):
    """A wheel install has no repository: each family's config.json travels in its package, ./config/ overrides it."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "-q", "-w", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode and any(w in result.stderr for w in ("No matching distribution", "NewConnectionError", "Could not find")):
        pytest.skip("pip cannot fetch the build backend (hatchling) here")
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("textclf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for family in ("bert", "embeddings", "fasttext", "lstm", "setfit"):
        assert f"textclf/families/{family}/config.json" in names, family
    assert not [n for n in names if n.startswith("textclf/_config/")]
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    work = tmp_path / "work"
    (work / "config").mkdir(parents=True)
    (work / "config" / "fasttext.json").write_text('{"model": {"epoch": 7}}')
    code = ("import json; from textclf.core.config import load_config; from textclf.core.registry import get_family; "
            "f = get_family('fasttext'); print(json.dumps([str(f.config_path()), str(f.override_path()), "
            "load_config('fasttext')['model']['epoch'], load_config('lstm')['train']['epochs']]))")
    env = {k: v for k, v in os.environ.items() if k != "TEXTCLF_CONFIG_DIR"} | {"PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    default, override, epoch, lstm_epochs = json.loads(out.stdout)
    assert default == str(tmp_path / "site" / "textclf" / "families" / "fasttext" / "config.json")
    assert override == str(work / "config" / "fasttext.json") and epoch == 7
    assert lstm_epochs == json.loads((repo / "src/textclf/families/lstm/config.json").read_text())["train"]["epochs"]
