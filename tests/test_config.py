"""Config files, --config merging and --set overrides with strict keys and types."""

from __future__ import annotations

import json

import pytest

from textclf.core.config import apply_override, config_dir, default_config, load_config, merge
from textclf.core.errors import ConfigError


def test_every_config_file_parses():
    files = sorted(config_dir().glob("*.json"))
    assert any(f.stem == "fasttext" for f in files)
    for f in files:
        assert isinstance(json.loads(f.read_text()), dict), f


def test_set_parses_json_values():
    cfg = load_config("fasttext", overrides=["model.lr=0.5", "model.loss=ova", "search.timeout=30",
                                             'search.space.dim={"type": "categorical", "choices": [10]}'])
    assert cfg["model"]["lr"] == 0.5
    assert cfg["model"]["loss"] == "ova"
    assert cfg["search"]["timeout"] == 30
    assert cfg["search"]["space"]["dim"] == {"type": "categorical", "choices": [10]}


def test_int_accepted_for_float_and_string_kept():
    cfg = apply_override(default_config("fasttext"), "model.lr=1")
    assert cfg["model"]["lr"] == 1.0 and isinstance(cfg["model"]["lr"], float)
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
    with pytest.raises(ConfigError, match="model.epoch: expected int"):
        load_config("fasttext", overrides=["model.epoch=fast"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config("fasttext", overrides=["model.epoch"])


def test_config_file_partial_merge(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"model": {"epoch": 7}, "search": {"n_trials": 3}}))
    cfg = load_config("fasttext", p, ["search.n_trials=4"])
    assert cfg["model"]["epoch"] == 7 and cfg["search"]["n_trials"] == 4 and cfg["model"]["lr"] == 0.1
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"epoch": 7,}}')
    with pytest.raises(ConfigError, match=r"bad\.json:1: invalid JSON"):
        load_config("fasttext", bad)


def test_merge_does_not_mutate():
    base = {"a": {"b": 1}}
    merge(base, {"a": {"b": 2}})
    assert base == {"a": {"b": 1}}
