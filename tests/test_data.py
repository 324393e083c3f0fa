"""Readers for every format, every bad input, splitting and downsampling."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.data import (
    Dataset,
    balanced_downsample,
    check_labels_known,
    iter_texts,
    read_labelled,
    stratified_split,
    write_labelled,
)
from textclf.core.errors import ConfigError, DataError
from textclf.core.registry import Format, format_for_path, format_names, get_format, register_format


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_reads_embedded_csv(tweets):
    ds = read_labelled(tweets["train"])
    assert len(ds) == 3356
    assert ds.label_set == ["negative", "positive"]
    assert Counter(ds.labels) == {"negative": 1039, "positive": 2317}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "fasttext"])
def test_every_format_round_trips(tmp_path, fmt):
    ds = Dataset(["good movie, really", "bad \"film\"", "so-so\tthing"], ["pos", "neg", "mixed label"])
    ext = {"fasttext": "txt"}.get(fmt, fmt)
    path = tmp_path / f"data.{ext}"
    write_labelled(path, ds)
    back = read_labelled(path, min_classes=0)
    expected_labels = ["pos", "neg", "mixed_label"] if fmt == "fasttext" else ds.labels
    assert back.labels == expected_labels
    assert back.texts[0] == "good movie, really"
    assert back.texts[1] == 'bad "film"'
    assert back.line_numbers == ([1, 2, 3] if fmt in ("jsonl", "fasttext") else [2, 3, 4])


def test_custom_columns_and_multiline_csv(tmp_path):
    p = write(tmp_path, "d.csv", 'id,body,y\n1,"line one\nline two",a\n2,plain,b\n')
    ds = read_labelled(p, text_column="body", label_column="y")
    assert ds.texts == ["line one\nline two", "plain"]
    assert ds.line_numbers == [2, 4]


def test_fasttext_format_multiple_labels_takes_first(tmp_path):
    p = write(tmp_path, "d.txt", "__label__a __label__b hello world\n__label__b bye\n")
    ds = read_labelled(p)
    assert ds.labels == ["a", "b"] and ds.texts == ["hello world", "bye"]


BAD_INPUTS = [
    ("missing.csv", None, "file not found", None),
    ("empty.csv", "", "file is empty", None),
    ("nolabel.csv", "text,lbl\nhi,a\n", "missing label column 'label'", 1),
    ("notext.csv", "body,label\nhi,a\n", "missing text column 'text'", 1),
    ("emptylabel.csv", "text,label\nhi,a\nyo,b\nhey,\n", "empty label", 4),
    ("emptytext.csv", "text,label\nhi,a\n ,b\n", "empty text", 3),
    ("fields.csv", "text,label\nhi,a\nhi,b,c\n", "expected 2 fields", 3),
    ("utf8.csv", b"text,label\nhi,a\n\xff\xfe bad,b\n", "invalid UTF-8", 3),
    ("nul.csv", b"text,label\nhi,a\nnul\x00here,b\n", "NUL byte", 3),
    ("oneclass.csv", "text,label\nhi,a\nyo,a\n", "need at least 2", None),
    ("nolabel.txt", "__label__a ok\nno label here\n", "no label", 2),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "invalid JSON", 2),
    ("key.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n', "missing text key 'text'", 2),
    ("header.csv", "text,label\n", "no data rows", None),
]


@pytest.mark.parametrize("name,content,message,line", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_line_and_problem(tmp_path, name, content, message, line):
    path = tmp_path / name
    if content is not None:
        write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        read_labelled(path)
    assert message in str(err.value)
    assert err.value.path == str(path)
    assert err.value.line == line
    prefix = f"{path}:{line}: " if line else f"{path}: "
    assert str(err.value).startswith(prefix)


def test_unseen_label_in_valid_is_named(tmp_path):
    train = read_labelled(write(tmp_path, "train.csv", "text,label\na,x\nb,y\n"))
    valid = read_labelled(write(tmp_path, "valid.csv", "text,label\nc,x\nd,z\n"), min_classes=0)
    with pytest.raises(DataError, match=r"valid\.csv:3: label 'z' does not occur in the training data"):
        check_labels_known(train, valid)


def test_cli_error_is_one_line_exit_2(tmp_path, tweets):
    bad = write(tmp_path, "bad.csv", "text,label\nhi,a\n\xff,b\n".encode("latin-1"))
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(bad), "--valid_path", str(tweets["valid"]),
                                      "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{bad}:3: invalid UTF-8" in result.output
    assert not (tmp_path / "m" / "meta.json").exists()


def test_iter_texts_keeps_empty_lines_for_alignment(tmp_path):
    p = write(tmp_path, "in.txt", "first\n\nthird line\n\n")
    assert list(iter_texts(p)) == ["first", "", "third line", ""]
    p = write(tmp_path, "in.jsonl", '{"text": "a"}\n\n{"text": "c"}\n')
    assert list(iter_texts(p)) == ["a", "", "c"]
    p = write(tmp_path, "in.csv", 'text\n"multi\nline"\n\nlast\n')
    assert list(iter_texts(p)) == ["multi\nline", "", "last"]


def test_stratified_split_is_deterministic_and_stratified(tweets):
    ds = read_labelled(tweets["train"])
    a = stratified_split(ds, 0.1, 0.1, seed=7)
    b = stratified_split(ds, 0.1, 0.1, seed=7)
    assert [p.texts for p in a] == [p.texts for p in b]
    train, valid, test = a
    assert len(train) + len(valid) + len(test) == len(ds)
    assert not set(train.texts) & set(test.texts)
    for part in (valid, test):
        share = Counter(part.labels)["negative"] / len(part)
        assert abs(share - 1039 / 3356) < 0.01
    c = stratified_split(ds, 0.1, 0.1, seed=8)
    assert c[2].texts != test.texts


def test_stratified_split_is_sklearns_train_test_split(tweets):
    from sklearn.model_selection import train_test_split

    ds = read_labelled(tweets["train"])
    train, valid, test = stratified_split(ds, 0.1, 0.2, seed=7)
    rest, held = train_test_split(list(range(len(ds))), test_size=0.2, random_state=7, stratify=ds.labels)
    assert test.texts == [ds.texts[i] for i in held]
    assert len(test) == 672 and len(valid) == 336 and len(train) == 3356 - 672 - 336  # sizes rounded up: ceil(frac * n)
    assert Counter(test.labels) == {"negative": 208, "positive": 464}  # in proportion to 1039 : 2317
    assert sorted(train.texts + valid.texts) == sorted(ds.texts[i] for i in rest)
    no_test = stratified_split(ds, 0.2, 0.0, seed=7)
    assert len(no_test[2]) == 0 and len(no_test[1]) == 672 and len(no_test[0]) == 3356 - 672


def test_stratified_split_refuses_too_small_classes_in_one_line(tmp_path):
    def ds(labels: str) -> Dataset:
        return Dataset([f"t{i}" for i in range(len(labels))], list(labels), "all.csv", list(range(2, 2 + len(labels))))

    with pytest.raises(DataError) as e:
        stratified_split(ds("aaaaaaaaab"), 0.2, 0.2)
    assert str(e.value) == ("all.csv: class 'b' has 1 row left for the stratified test split; every class needs at least 2 "
                            "there (more rows of it, or --test_frac 0)")
    assert [len(p) for p in stratified_split(ds("aaaaaaaaab"), 0.0, 0.0)] == [10, 0, 0]
    with pytest.raises(DataError) as e:
        stratified_split(ds("aabbcc"), 0.1, 0.1)
    assert str(e.value) == ("all.csv: cannot split a stratified test part of 0.1 off 6 rows of 3 classes: "
                            "The test_size = 1 should be greater or equal to the number of classes = 3")
    big = tmp_path / "all.csv"
    write_labelled(big, ds("aaaaaaaaab"))
    result = CliRunner().invoke(cli, ["make-dataset", "--input_path", str(big), "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].endswith("class 'b' has 1 row left for the stratified test split; "
                                                            "every class needs at least 2 there (more rows of it, or --test_frac 0)")


def test_balanced_downsample(tweets):
    ds = read_labelled(tweets["train"])
    idx = balanced_downsample(ds.labels, seed=1)
    counts = Counter(ds.labels[i] for i in idx)
    assert counts == {"negative": 1039, "positive": 1039}
    assert idx == sorted(set(idx))
    assert balanced_downsample(ds.labels, seed=1) == idx


def test_make_dataset_cli(tmp_path, tweets):
    out = tmp_path / "split"
    result = CliRunner().invoke(cli, ["make-dataset", "--input_path", str(tweets["train"]), "--output_dir", str(out),
                                      "--downsample", "--seed", "3"])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) == {"train", "valid", "test", "train_balanced"}
    assert stats["train"]["rows"] + stats["valid"]["rows"] + stats["test"]["rows"] == 3356
    bal = read_labelled(out / "train_balanced.csv")
    assert len(set(Counter(bal.labels).values())) == 1
    again = tmp_path / "again"
    CliRunner().invoke(cli, ["make-dataset", "--input_path", str(tweets["train"]), "--output_dir", str(again), "--seed", "3"])
    assert (again / "test.csv").read_bytes() == (out / "test.csv").read_bytes()


def test_atomic_write_keeps_normal_permissions_and_leaves_no_temp(tmp_path):
    import os

    from textclf.core.atomic import atomic_open, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "a.txt") as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# --------------------------------------------------------------------------- the format registry
def test_the_format_registry_lists_the_builtin_formats_by_what_they_can_do():
    assert format_names() == ["txt", "csv", "tsv", "jsonl", "fasttext"]
    assert format_names("read") == ["csv", "tsv", "jsonl", "fasttext"]
    assert format_names("texts") == ["txt", "csv", "tsv", "jsonl", "fasttext"]
    assert format_names("predictions") == ["txt", "csv", "jsonl"]
    assert format_names("write") == ["csv", "tsv", "jsonl", "fasttext"]
    assert get_format("fasttext").extensions == (".txt", ".ft", ".fasttext") and get_format("fasttext").suffix == ".txt"
    assert get_format("csv").files and not get_format("txt").probabilities


@pytest.mark.parametrize("name,read,texts,predictions", [
    ("a.csv", "csv", "csv", "csv"),
    ("a.TSV", "tsv", "tsv", "txt"),
    ("a.tab", "tsv", "tsv", "txt"),
    ("a.jsonl", "jsonl", "jsonl", "jsonl"),
    ("a.ndjson", "jsonl", "jsonl", "jsonl"),
    ("a.json", "jsonl", "jsonl", "jsonl"),
    ("a.txt", "fasttext", "txt", "txt"),
    ("a.ft", "fasttext", "fasttext", "txt"),
    ("a.fasttext", "fasttext", "fasttext", "txt"),
    ("a.xml", "fasttext", "txt", "txt"),
    ("noextension", "fasttext", "txt", "txt"),
])
def test_the_extension_picks_the_format_for_each_job(name, read, texts, predictions):
    assert [format_for_path(name, job).name for job in ("read", "texts", "predictions")] == [read, texts, predictions]


def test_an_unknown_format_is_one_line_listing_the_known_ones(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\nhi,a\nyo,b\n")
    hint = "(a format from your own file needs --code FILE)"
    with pytest.raises(ConfigError) as err:
        read_labelled(path, "xml")
    assert str(err.value) == f"unknown format 'xml' for labelled data; known: csv, tsv, jsonl, fasttext {hint}"
    with pytest.raises(ConfigError) as err:
        list(iter_texts(path, "xml"))
    assert str(err.value) == f"unknown format 'xml' for prediction input; known: txt, csv, tsv, jsonl, fasttext {hint}"
    with pytest.raises(ConfigError) as err:  # txt is a format, but it holds no labels
        write_labelled(tmp_path / "out.txt", read_labelled(path), "txt")
    assert str(err.value) == f"unknown format 'txt' for labelled output; known: csv, tsv, jsonl, fasttext {hint}"
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(ConfigError) as err:
        get_format("xml")
    assert str(err.value) == f"unknown format 'xml'; known: txt, csv, tsv, jsonl, fasttext {hint}"


def test_a_format_that_breaks_the_contract_is_refused():
    with pytest.raises(ConfigError) as err:
        Format(name="x", extensions=(".x",))
    assert str(err.value) == "format 'x' can do nothing: give it read, texts, predictions or write"
    with pytest.raises(ConfigError) as err:
        Format(name="x", read=5)
    assert str(err.value) == "format 'x': read must be a function or a \"module:attr\" string"
    with pytest.raises(ConfigError) as err:
        register_format(object())
    assert str(err.value) == "register_format expects a textclf.core.registry.Format, got object"
    assert Format(name="x", extensions=("X", ".Y"), texts="some.module:texts").extensions == (".x", ".y")
    assert format_names() == ["txt", "csv", "tsv", "jsonl", "fasttext"]  # nothing was registered


def test_make_dataset_writes_each_format_with_its_extension(tmp_path, tweets):
    for fmt, name in (("fasttext", "train.txt"), ("tsv", "train.tsv"), ("jsonl", "train.jsonl")):
        out = tmp_path / fmt
        result = CliRunner().invoke(cli, ["make-dataset", "--input_path", str(tweets["test"]), "--output_dir", str(out),
                                          "--output_format", fmt])
        assert result.exit_code == 0, result.output
        ext = name.split(".")[1]
        assert sum(len(read_labelled(out / f"{part}.{ext}", fmt, min_classes=0)) for part in ("train", "valid", "test")) == 420
        assert read_labelled(out / name).labels == read_labelled(out / name, fmt).labels  # the extension says the format
    result = CliRunner().invoke(cli, ["make-dataset", "--input_path", str(tweets["test"]), "--output_dir", str(tmp_path / "x"),
                                      "--output_format", "txt"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: Invalid value for '--output_format': unknown format 'txt' for labelled output; "
                                     "known: csv, tsv, jsonl, fasttext (a format from your own file needs --code FILE) "
                                     "(see 'cli make-dataset --help')")
