"""Config files: each family's default in its own folder, the user's config/<family>.json override, --config, --set."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.config import apply_override, default_config, load_config, merge
from textclf.core.errors import ConfigError
from textclf.core.registry import all_families, get_family

BUILT_IN = ("bert", "embeddings", "fasttext", "lstm", "setfit")


def test_every_config_file_parses(repo):
    files = sorted((repo / "src" / "textclf" / "families").glob("*/config.json")) + sorted((repo / "config").glob("*.json"))
    assert {f.parent.name for f in files} >= set(BUILT_IN) and any(f.name == "bert_smoke.json" for f in files)
    for f in files:
        assert isinstance(json.loads(f.read_text()), dict), f
    # the repository's config/ holds only extras: no file there shadows a family's default
    assert not {f.stem for f in (repo / "config").glob("*.json")} & set(all_families())


@pytest.fixture
def config_dir_env(tmp_path, monkeypatch):
    """An empty $TEXTCLF_CONFIG_DIR: the only folder searched for config/<family>.json overrides."""
    folder = tmp_path / "myconfig"
    folder.mkdir()
    monkeypatch.setenv("TEXTCLF_CONFIG_DIR", str(folder))
    return folder


@pytest.mark.parametrize("name", BUILT_IN)
def test_default_comes_from_the_family_folder_with_no_config_dir(name, config_dir_env, repo):
    """No override anywhere: the default is the family's own config.json, read through the registry."""
    family = get_family(name)
    assert family.config_path() == repo / "src" / "textclf" / "families" / name / "config.json"
    assert family.override_path() is None
    packaged = json.loads(family.config_path().read_text())
    cfg = load_config(name)
    assert cfg == family.default_config()
    for block, value in packaged.items():
        assert cfg[block] == value if not isinstance(value, dict) else {**cfg[block], **value} == cfg[block], block


def test_partial_override_is_merged_and_recorded_in_meta(config_dir_env, tmp_path, tweets):
    (config_dir_env / "fasttext.json").write_text(json.dumps({"model": {"epoch": 3, "dim": 10}, "search": {"n_trials": 0}}))
    family = get_family("fasttext")
    assert family.override_path() == config_dir_env / "fasttext.json"
    base = family.default_config()
    cfg = load_config("fasttext")
    assert cfg["model"]["epoch"] == 3 and cfg["model"]["dim"] == 10 and cfg["search"]["n_trials"] == 0
    assert cfg["model"]["lr"] == base["model"]["lr"] and cfg["search"]["space"] == base["search"]["space"]
    # --config and --set keep their meaning on top of the override
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"model": {"dim": 12}}))
    top = load_config("fasttext", mine, ["model.epoch=2"])
    assert (top["model"]["epoch"], top["model"]["dim"]) == (2, 12)
    # a real run records the merged config
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path",
                                      str(tweets["valid"]), "--output_dir", str(out), "--set", "model.wordNgrams=1"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["model"] == {**base["model"], "epoch": 3, "dim": 10, "wordNgrams": 1}
    assert meta["config"]["search"]["n_trials"] == 0 and "search" not in meta  # no search ran
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(cli, ["families", "--json"]).output)}
    assert rows["fasttext"]["override"] == str(config_dir_env / "fasttext.json") and rows["lstm"]["override"] is None


def test_a_full_old_style_copy_still_works(config_dir_env, repo):
    """The old layout kept a full default in config/<family>.json; such a copy (edited or not) is a valid override."""
    full = json.loads((repo / "src" / "textclf" / "families" / "lstm" / "config.json").read_text())
    full["train"]["epochs"] = 2
    (config_dir_env / "lstm.json").write_text(json.dumps(full))
    cfg = load_config("lstm")
    assert cfg["train"]["epochs"] == 2 and cfg == merge(get_family("lstm").default_config(), full)


def test_bad_key_in_the_override_is_a_one_line_error_naming_the_file(config_dir_env, tweets, tmp_path):
    path = config_dir_env / "fasttext.json"
    path.write_text(json.dumps({"model": {"learning_rate": 0.5}}))
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'model.learning_rate'; valid keys: .*model\.lr"):
        load_config("fasttext")
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path",
                                      str(tweets["valid"]), "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"{path}: unknown key 'model.learning_rate'" in lines[0]
    path.write_text('{"model": {"epoch": 3,}}')
    with pytest.raises(ConfigError, match=rf"^{path}:1: invalid JSON"):
        load_config("fasttext")
    path.write_text('{"model": {"epoch": "many"}}')
    with pytest.raises(ConfigError, match=rf"^{path}: model.epoch: expected int, got str 'many'$"):
        load_config("fasttext")


def test_override_folders_working_directory_then_checkout(tmp_path, monkeypatch, repo):
    from textclf.core.jsonfiles import config_dirs

    monkeypatch.delenv("TEXTCLF_CONFIG_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert config_dirs() == [tmp_path / "config", repo / "config"]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fasttext.json").write_text('{"model": {"epoch": 4}}')
    assert get_family("fasttext").override_path() == tmp_path / "config" / "fasttext.json"
    assert load_config("fasttext")["model"]["epoch"] == 4
    monkeypatch.chdir(repo)
    assert config_dirs() == [repo / "config"] and get_family("fasttext").override_path() is None


def test_set_parses_json_values():
    cfg = load_config("fasttext", overrides=["model.t=0.5", "model.loss=ova", "search.timeout=30",
                                             'search.space.dim={"type": "categorical", "choices": [10]}'])
    assert cfg["model"]["t"] == 0.5
    assert cfg["model"]["loss"] == "ova"
    assert cfg["search"]["timeout"] == 30
    assert cfg["search"]["space"]["dim"] == {"type": "categorical", "choices": [10]}


def test_int_accepted_for_float_and_string_kept():
    cfg = apply_override(default_config("fasttext"), "model.t=1")
    assert cfg["model"]["t"] == 1.0 and isinstance(cfg["model"]["t"], float)
    # over an "auto" default a number arrives as text, which the setting's reader parses (fastText's lr)
    from textclf.families.fasttext.model import resolve_params

    lr = apply_override(cfg, "model.lr=0.5")["model"]
    assert lr["lr"] == "0.5" and resolve_params(lr, ["a text"])["lr"] == 0.5
    cfg = apply_override(cfg, "data.text_column=123")
    assert cfg["data"]["text_column"] == "123"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("fasttext", overrides=["model.learning_rate=0.1"])
    msg = str(err.value)
    assert "unknown key 'model.learning_rate'" in msg and "model.lr" in msg and "model.epoch" in msg


def test_set_reaches_keys_that_hold_dots():
    """A search-space entry named by a dotted config key (``stage2.lr``) is reachable with --set."""
    space = {"search": {"space": {"stage2.lr": {"low": 1e-5, "high": 1e-3}}}, "stage2": {"lr": 5e-5}}
    cfg = apply_override(apply_override(space, "search.space.stage2.lr.low=2e-5"), "stage2.lr=1e-4")
    assert cfg == {"search": {"space": {"stage2.lr": {"low": 2e-5, "high": 1e-3}}}, "stage2": {"lr": 1e-4}}
    with pytest.raises(ConfigError, match=r"unknown key 'search.space.stage2.lr.lo'"):
        apply_override(space, "search.space.stage2.lr.lo=1")


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="^model.epoch: expected int"):
        load_config("fasttext", overrides=["model.epoch=fast"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config("fasttext", overrides=["model.epoch"])


def test_config_file_partial_merge(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"model": {"epoch": 7}, "search": {"n_trials": 3}}))
    cfg = load_config("fasttext", p, ["search.n_trials=4"])
    assert cfg["model"]["epoch"] == 7 and cfg["search"]["n_trials"] == 4 and cfg["model"]["lr"] == "auto"
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"epoch": 7,}}')
    with pytest.raises(ConfigError, match=r"bad\.json:1: invalid JSON"):
        load_config("fasttext", bad)


def test_merge_does_not_mutate():
    base = {"a": {"b": 1}}
    merge(base, {"a": {"b": 2}})
    assert base == {"a": {"b": 1}}
