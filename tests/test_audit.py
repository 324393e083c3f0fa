"""``textclf audit``: out-of-fold probabilities + cleanlab find planted label errors; apply writes a new version with lineage;
the review page works offline and through ``serve-audit`` in a real headless chromium."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.lineage import lineage_path, read_lineage
from textclf.services.audit.outputs import read_relabel
from textclf.services.audit.page import render_page

REPO = Path(__file__).resolve().parents[1]
VOCAB = {
    "sport": "goal match team league striker coach score referee stadium season".split(),
    "food": "recipe garlic oven bake flavour sauce dinner spicy noodle butter".split(),
    "tech": "laptop software chip server python cloud battery update screen keyboard".split(),
}
COMMON = "the a today really very new my our this that".split()
DUPLICATE = ("Great match tonight, what a goal!", "great match tonight what a GOAL")


def synthetic(path: Path, rows: int = 240, flip: float = 0.1, seed: int = 0) -> list[int]:
    """A 3-class CSV with one planted cue vocabulary per class and ``flip`` of the labels flipped; returns the flipped rows (1-based)."""
    rng = random.Random(seed)
    labels = sorted(VOCAB)
    data = []
    for i in range(rows):
        label = labels[i % 3]
        words = rng.sample(VOCAB[label], 5) + rng.sample(COMMON, 3)
        rng.shuffle(words)
        data.append([" ".join(words), label])
    flipped = sorted(rng.sample(range(rows), int(rows * flip)))
    for i in flipped:
        data[i][1] = rng.choice([x for x in labels if x != data[i][1]])
    data += [[DUPLICATE[0], "sport"], [DUPLICATE[1], "food"]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text", "label"], *data])
    return [i + 1 for i in flipped]


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One fastText audit of the synthetic data (5 folds, seconds)."""
    root = tmp_path_factory.mktemp("audit")
    data = root / "train.csv"
    flipped = synthetic(data)
    invoke("audit", "--data_path", data, "--family", "fasttext", "--output_dir", root / "audit")
    return {"data": data, "dir": root / "audit", "flipped": flipped}


def test_audit_finds_planted_flips_and_duplicates(audited):
    out = audited["dir"]
    assert sorted(p.name for p in out.iterdir()) == ["audit.html", "audit.json", "issues.csv", "oof", "relabel.csv"]
    with open(out / "issues.csv", newline="", encoding="utf-8") as fh:
        issues = list(csv.DictReader(fh))
    label_issues = [r for r in issues if r["issue"] == "label_issue"]
    flipped = audited["flipped"]
    top = {int(r["row"]) for r in label_issues[: len(flipped)]}
    assert len(top & set(flipped)) / len(flipped) >= 0.8  # fastText separates the cue words: most flips ranked first
    confidences = [float(r["self_confidence"]) for r in label_issues]
    assert confidences == sorted(confidences)  # ranked by self-confidence, most suspect first
    assert all(r["vote_fasttext"] in VOCAB for r in issues)
    # the two spellings of one text with different labels: a conflicting duplicate, each naming the other row
    dup = {int(r["row"]): r for r in issues if r["issue"] == "conflicting_duplicate"}
    assert set(dup) <= {241, 242} and dup and all(r["duplicate_rows"] in ("241", "242") for r in dup.values())
    relabel = read_relabel(out / "relabel.csv")
    assert {r["row"] for r in relabel} == {int(r["row"]) for r in issues}
    assert all(r["decision"] == "" and r["new_label"] == "" for r in relabel)
    summary = json.loads((out / "audit.json").read_text())
    assert summary["families"] == ["fasttext"] and summary["folds"] == 5 and summary["n_rows"] == 242


def test_audit_repeat_reuses_out_of_fold_memo(audited, tmp_path):
    memo = audited["dir"] / "oof" / "fasttext.npz"
    before = memo.stat().st_mtime_ns
    invoke("audit", "--data_path", audited["data"], "--family", "fasttext", "--output_dir", audited["dir"])
    assert memo.stat().st_mtime_ns == before  # nothing refitted
    invoke("audit", "--data_path", audited["data"], "--family", "fasttext", "--folds", "3", "--output_dir", tmp_path / "a3")
    assert json.loads((tmp_path / "a3" / "audit.json").read_text())["folds"] == 3


def test_an_interrupted_audit_refits_only_the_folds_it_had_not_finished(tmp_path, monkeypatch):
    """Ctrl-C during fold 3 of 4: the memo keeps folds 1-2, the rerun fits only folds 3-4, and the probabilities equal an
    uninterrupted audit's (fastText on one thread is deterministic)."""
    import numpy as np

    from textclf.services.audit import oof

    data = tmp_path / "train.csv"
    synthetic(data)
    args = ("audit", "--data_path", data, "--family", "fasttext", "--set", "fasttext:model.thread=1", "--folds", "4")
    invoke(*args, "--output_dir", tmp_path / "straight")
    real, calls = oof.fit_family, []

    def counted(family, cfg, splits, *rest, **kw):
        calls.append(splits.paths["valid"])
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return real(family, cfg, splits, *rest, **kw)

    monkeypatch.setattr(oof, "fit_family", counted)
    interrupt = True
    result = CliRunner().invoke(cli, [str(a) for a in (*args, "--output_dir", tmp_path / "cut")])
    assert result.exit_code != 0 and not (tmp_path / "cut" / "issues.csv").exists()
    with np.load(tmp_path / "cut" / "oof" / "fasttext.npz") as memo:
        assert memo["done"].tolist() == [True, True, False, False]
    interrupt, calls[:] = False, []
    invoke(*args, "--output_dir", tmp_path / "cut")
    assert [c.rsplit("(", 1)[1] for c in calls] == ["fold 3 held out)", "fold 4 held out)"]
    np.testing.assert_array_equal(np.load(tmp_path / "cut" / "oof" / "fasttext.npz")["proba"],
                                  np.load(tmp_path / "straight" / "oof" / "fasttext.npz")["proba"])
    assert (tmp_path / "cut" / "issues.csv").read_text() == (tmp_path / "straight" / "issues.csv").read_text()


def test_audit_through_the_run_queue_equals_the_in_process_audit(tmp_path):
    """--queue: the K fold fits are queue tasks (this process works them); same probabilities and ranking as in-process."""
    import numpy as np

    data = tmp_path / "train.csv"
    synthetic(data, rows=150)
    one_thread = ("--set", "fasttext:model.thread=1")  # Hogwild! with one thread: a seed gives one model
    invoke("audit", "--data_path", data, "--family", "fasttext", *one_thread, "--folds", "3", "--output_dir", tmp_path / "local")
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    out = invoke("audit", "--data_path", data, "--family", "fasttext", *one_thread, "--folds", "3", "--output_dir",
                 tmp_path / "queued", "--queue", storage, "--queue_name", "aud")
    assert "152 rows" in out
    local = np.load(tmp_path / "local" / "oof" / "fasttext.npz")["proba"]
    np.testing.assert_array_equal(np.load(tmp_path / "queued" / "oof" / "fasttext.npz")["proba"], local)
    assert (tmp_path / "queued" / "issues.csv").read_text() == (tmp_path / "local" / "issues.csv").read_text()
    status = json.loads(invoke("queue", "status", "--queue", "aud", "--storage", storage, "--json"))
    tasks = status["tasks"] if isinstance(status, dict) else status
    assert [t["state"] for t in tasks] == ["done"] * 3 and {t["task"].split()[0] for t in tasks} == {"fasttext"}
    assert sorted(p.name for p in (tmp_path / "queued" / "folds").iterdir()) == ["1", "2", "3"]
    assert json.loads((tmp_path / "queued" / "audit.json").read_text())["queue"] == {"storage": storage, "name": "aud"}
    # a rerun without the memo reuses the finished tasks: no new task, the same probabilities
    (tmp_path / "queued" / "oof" / "fasttext.npz").unlink()
    invoke("audit", "--data_path", data, "--family", "fasttext", *one_thread, "--folds", "3", "--output_dir",
           tmp_path / "queued", "--queue", storage, "--queue_name", "aud")
    again = json.loads(invoke("queue", "status", "--queue", "aud", "--storage", storage, "--json"))
    assert len(again["tasks"] if isinstance(again, dict) else again) == 3
    np.testing.assert_array_equal(np.load(tmp_path / "queued" / "oof" / "fasttext.npz")["proba"], local)


@pytest.mark.slow  # a separate worker process (quick: test_audit_through_the_run_queue_equals_the_in_process_audit)
def test_audit_queue_tasks_run_by_a_separate_worker_process(tmp_path):
    """--no-work: the audit only enqueues and waits; a `textclf queue worker` process (another machine's) runs the folds."""
    import subprocess
    import sys

    data = tmp_path / "train.csv"
    synthetic(data, rows=90)
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    args = ("audit", "--data_path", data, "--family", "fasttext", "--set", "fasttext:model.thread=1", "--folds", "2",
            "--output_dir", tmp_path / "a", "--queue", storage, "--queue_name", "shared", "--no-work")
    out = invoke(*args, "--wait", "0.5", code=2)
    # the error is one line, the last; textclf's INFO lines (stderr) come before it when this is the process's first
    # command (the log handler writes to the stderr of the first invocation that set it up)
    lines = out.strip().splitlines()
    assert lines[-1] == ("Error: audit: 2 fold task(s) still unfinished after 0.5 s; start workers "
                         "(textclf queue worker --queue shared --storage ...) and run the audit again")
    assert all(" INFO textclf." in line for line in lines[:-1])
    worker = subprocess.run([str(Path(sys.executable).parent / "textclf"), "queue", "worker", "--queue", "shared", "--storage", storage,
                             "--idle_exit", "1", "--no-track", "--output_root", str(tmp_path / "worker_models")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert worker.returncode == 0 and "worker done: 2 task(s) run from 'shared'" in worker.stdout, worker.stderr
    invoke(*args)
    assert sorted(p.name for p in (tmp_path / "worker_models" / "shared").iterdir()) == ["0000-fasttext", "0001-fasttext"]
    assert (tmp_path / "a" / "oof" / "fasttext.npz").is_file() and (tmp_path / "a" / "issues.csv").is_file()
    assert not (tmp_path / "a" / "queue_models").exists()  # this process trained nothing


def decide(relabel: Path, decisions: dict[int, tuple[str, str]]) -> None:
    rows = list(csv.DictReader(open(relabel, newline="", encoding="utf-8")))
    for r in rows:
        if int(r["row"]) in decisions:
            r["decision"], r["new_label"] = decisions[int(r["row"])]
    with open(relabel, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_apply_writes_new_version_with_lineage(audited, tmp_path):
    relabel = tmp_path / "relabel.csv"
    relabel.write_bytes((audited["dir"] / "relabel.csv").read_bytes())
    rows = read_relabel(relabel)
    a, b, c = rows[0], rows[1], rows[2]
    decide(relabel, {a["row"]: ("relabel", ""), b["row"]: ("drop", ""), c["row"]: ("keep", "")})
    before = audited["data"].read_bytes()
    out = tmp_path / "train.v2.csv"
    printed = invoke("audit", "apply", relabel, "--data_path", audited["data"], "--output_path", out)
    assert "(1 relabelled, 1 dropped of 242)" in printed
    assert audited["data"].read_bytes() == before
    new = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    old = list(csv.DictReader(open(audited["data"], newline="", encoding="utf-8")))
    assert len(new) == 241
    assert [r["text"] for r in new] == [r["text"] for i, r in enumerate(old, 1) if i != b["row"]]
    moved = next(r for r in new if r["text"] == a["text"])
    assert moved["label"] == a["suggested"] != a["given"]
    lineage = read_lineage(out)
    assert lineage["relabelled"] == 1 and lineage["dropped"] == 1 and lineage["rows_before"] == 242
    assert lineage["parent"] == str(audited["data"].resolve())
    out.write_text(out.read_text() + "extra row,sport\n")
    assert read_lineage(out) is None and lineage_path(out).is_file()  # edited since: the sidecar no longer describes it


@pytest.mark.parametrize(("edit", "message"), [
    ("decision=maybe", "decision must be one of keep, relabel, drop (or empty), found 'maybe'"),
    ("new_label=weather", "new_label 'weather' is not a label of the data (food, sport, tech)"),
    ("row=9999", "row 9999 is past the end of the data (242 rows)"),
    ("text=something else", "the text differs from the data's row"),
])
def test_apply_bad_relabel_rows_are_one_line_errors(audited, tmp_path, edit, message):
    relabel = tmp_path / "relabel.csv"
    rows = list(csv.DictReader(open(audited["dir"] / "relabel.csv", newline="", encoding="utf-8")))
    key, value = edit.split("=")
    rows[1]["decision"] = "relabel"
    rows[1][key] = value
    with open(relabel, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "v2.csv"
    result = CliRunner().invoke(cli, ["audit", "apply", str(relabel), "--data_path", str(audited["data"]), "--output_path", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.startswith(f"Error: {relabel}:3: ") and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_apply_refuses_to_overwrite_the_data(audited):
    result = CliRunner().invoke(cli, ["audit", "apply", str(audited["dir"] / "relabel.csv"), "--data_path", str(audited["data"]),
                                      "--output_path", str(audited["data"])])
    assert result.exit_code == 2 and "is the data file itself" in result.output


def test_runs_diff_shows_the_data_changed(audited, tmp_path):
    from textclf.services.tracking import open_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_store(uri)
    relabel = tmp_path / "relabel.csv"
    relabel.write_bytes((audited["dir"] / "relabel.csv").read_bytes())
    rows = read_relabel(relabel)
    decide(relabel, {r["row"]: ("relabel", "") for r in rows[:3]} | {rows[3]["row"]: ("drop", "")})
    v2 = tmp_path / "train.v2.csv"
    invoke("audit", "apply", relabel, "--data_path", audited["data"], "--output_path", v2)
    ids = []
    for name, train in (("a", audited["data"]), ("b", v2)):
        invoke("train", "fasttext", "--train_path", train, "--valid_path", audited["data"], "--output_dir", tmp_path / name,
               "--n_trials", "0", "--track", "--tracking_uri", uri, "--set", "model.epoch=5", "--set", "model.bucket=10000")
    from textclf.services.tracking import open_store as store_of

    ids = [r.info.run_id for r in sorted(store_of(uri, create=False).search(""), key=lambda r: r.info.start_time)]
    lines = invoke("runs", "diff", ids[0], ids[1], "--tracking_uri", uri)
    assert "data_lineage" in lines and "4 of 242 rows changed (3 relabelled, 1 dropped)" in lines
    assert "data_rows_changed" in lines and "sha256.train" in lines


def multilabel_data(path: Path, rows: int = 180, seed: int = 1) -> list[tuple[int, str]]:
    """Label sets from cue words (each row one or two topics); a few labels removed: returns (row, removed label)."""
    rng = random.Random(seed)
    topics = sorted(VOCAB)
    out, removed = [], []
    for i in range(rows):
        chosen = sorted(rng.sample(topics, 1 + (i % 2)))
        words = [w for t in chosen for w in rng.sample(VOCAB[t], 4)] + rng.sample(COMMON, 2)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "labels": chosen})
    for i in rng.sample([i for i, r in enumerate(out) if len(r["labels"]) == 2], 8):
        gone = out[i]["labels"].pop(0)
        removed.append((i + 1, gone))
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return removed


def test_multilabel_audit_flags_missing_labels(tmp_path):
    data = tmp_path / "train.jsonl"
    removed = multilabel_data(data)
    invoke("audit", "--data_path", data, "--family", "fasttext", "--output_dir", tmp_path / "audit",
           "--set", "data.label_column=labels", "--set", "fasttext:model.lr=0.5")
    with open(tmp_path / "audit" / "issues.csv", newline="", encoding="utf-8") as fh:
        issues = list(csv.DictReader(fh))
    found = {(int(r["row"]), r["label"]) for r in issues}
    # per-label issues name the removed topic; confident learning is cautious on a confident model: few but right
    assert sum(pair in found for pair in removed) >= 3 and found <= set(removed)
    relabel = {r["row"]: r for r in read_relabel(tmp_path / "audit" / "relabel.csv")}
    row, label = next(pair for pair in removed if pair in found)
    assert label in relabel[row]["suggested"].split("|")
    decide(tmp_path / "audit" / "relabel.csv", {row: ("relabel", "")})
    invoke("audit", "apply", tmp_path / "audit" / "relabel.csv", "--data_path", data, "--output_path", tmp_path / "v2.jsonl",
           "--set", "data.label_column=labels")
    fixed = [json.loads(line) for line in (tmp_path / "v2.jsonl").read_text().splitlines()]
    assert label in fixed[row - 1]["labels"]


def test_page_is_one_offline_file_with_the_rows(audited):
    page = (audited["dir"] / "audit.html").read_text(encoding="utf-8")
    assert "<script src" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    rows = json.loads((audited["dir"] / "audit.json").read_text())["rows"]
    assert all(f'"row": {r["row"]},' in page for r in rows)
    hostile = render_page({"labels": ["a"], "families": ["f"]}, [{**rows[0], "text": "</script><script>alert(1)</script>"}])
    assert "</script><script>alert(1)" not in hostile


def test_audit_usage_errors(tmp_path):
    result = CliRunner().invoke(cli, ["audit", "--family", "fasttext"])
    assert result.exit_code == 2 and "Missing option '--data_path'" in result.output
    data = tmp_path / "t.csv"
    synthetic(data, rows=30)
    result = CliRunner().invoke(cli, ["audit", "--data_path", str(data), "--family", "fasttext", "--folds", "1"])
    assert result.exit_code == 2 and "--folds must be at least 2, got 1" in result.output
    result = CliRunner().invoke(cli, ["audit", "--data_path", str(data), "--family", "fasttext", "--no-work"])
    assert result.exit_code == 2 and "--queue_name, --no-work and --wait need --queue STORAGE" in result.output


# ---- the review page in a real headless chromium (browser_page: Debian's chromium via Playwright) ----


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("page")
    synthetic(root / "train.csv")
    result = CliRunner().invoke(cli, ["audit", "--data_path", str(root / "train.csv"), "--family", "fasttext",
                                      "--output_dir", str(root / "audit")])
    assert result.exit_code == 0, result.output
    return root / "audit"


def shown_rows(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#suspects tbody tr", "els => els.map(e => e.dataset.row)")]


def test_offline_page_filter_mark_and_download(audit_dir, browser_page, tmp_path):
    page = browser_page.page
    page.goto((audit_dir / "audit.html").as_uri())
    every = shown_rows(page)
    expected = {r["row"] for r in read_relabel(audit_dir / "relabel.csv")}
    assert set(every) == expected
    confidences = [float(x) for x in page.eval_on_selector_all("#suspects td.conf", "els => els.map(e => e.textContent)")]
    assert confidences == sorted(confidences)  # most suspect first

    # filter by class (given or suggested), then by confidence
    page.select_option("#class", "tech")
    tech = shown_rows(page)
    givens = page.eval_on_selector_all("#suspects td.given", "els => els.map(e => e.textContent)")
    suggested = page.eval_on_selector_all("#suspects td.suggested", "els => els.map(e => e.textContent)")
    assert tech and len(tech) < len(every) and all("tech" in (g, s) for g, s in zip(givens, suggested, strict=True))
    page.fill("#max-conf", "0.2")
    low = shown_rows(page)
    assert set(low) <= set(tech) and all(float(x) <= 0.2 for x in
                                         page.eval_on_selector_all("#suspects td.conf", "els => els.map(e => e.textContent)"))
    page.fill("#max-conf", "1")
    # sort by row (click the header)
    page.click("#suspects th[data-key=row]")
    assert shown_rows(page) == sorted(tech)

    first, second = shown_rows(page)[:2]
    page.click(f"tr[data-row='{first}'] button[data-decision=relabel]")
    assert page.input_value(f"tr[data-row='{first}'] input.new-label") == page.text_content(f"tr[data-row='{first}'] td.suggested")
    page.click(f"tr[data-row='{second}'] button[data-decision=drop]")
    shots = os.environ.get("TEXTCLF_SCREENSHOTS")  # TEXTCLF_SCREENSHOTS=docs/img refreshes docs/audit.md's picture
    page.screenshot(path=str(Path(shots) / "audit.png" if shots else tmp_path / "audit.png"), full_page=False)
    other = next(label for label in VOCAB if label not in page.text_content(f"tr[data-row='{first}']"))
    page.fill(f"tr[data-row='{first}'] input.new-label", other)  # a label of the reviewer's own choice
    page.dispatch_event(f"tr[data-row='{first}'] input.new-label", "change")
    page.select_option("#vote", "undecided")
    assert first not in shown_rows(page) and second not in shown_rows(page)
    page.select_option("#vote", "")
    page.select_option("#class", "")

    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == "relabel.csv"
    saved = tmp_path / "relabel.csv"
    download.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"), newline="")))
    decided = {int(r["row"]): (r["decision"], r["new_label"]) for r in rows if r["decision"]}
    assert decided == {first: ("relabel", other), second: ("drop", "")}
    assert {int(r["row"]) for r in rows} == expected
    original = {int(r["row"]): r for r in csv.DictReader(open(audit_dir / "relabel.csv", newline="", encoding="utf-8"))}
    assert all(r["text"] == original[int(r["row"])]["text"] for r in rows)  # texts survive the CSV round trip
    # the exported file is what `audit apply` reads
    out = tmp_path / "v2.csv"
    result = CliRunner().invoke(cli, ["audit", "apply", str(saved), "--data_path", str(audit_dir.parent / "train.csv"),
                                      "--output_path", str(out)])
    assert result.exit_code == 0 and "1 relabelled, 1 dropped" in result.output, result.output
    assert browser_page.external == [] and browser_page.console_errors == []


def test_serve_audit_saves_decisions(audit_dir, browser_page, tmp_path):
    import uvicorn

    from textclf.cli.serve_cmd import bind
    from textclf.services.audit.server import make_app

    served = tmp_path / "audit"
    shutil.copytree(audit_dir, served)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(served), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        page = browser_page.page
        page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        rows = shown_rows(page)
        a, b = rows[0], rows[1]
        page.click(f"tr[data-row='{a}'] button[data-decision=keep]")
        page.wait_for_selector("#status:has-text('saved row')")
        page.click(f"tr[data-row='{b}'] button[data-decision=relabel]")
        page.wait_for_selector(f"#status:has-text('saved row {b}')")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            decided = {r["row"]: (r["decision"], r["new_label"]) for r in read_relabel(served / "relabel.csv") if r["decision"]}
            if len(decided) == 2:
                break
            time.sleep(0.1)
        suggested = {r["row"]: r["suggested"] for r in read_relabel(served / "relabel.csv")}
        assert decided == {a: ("keep", ""), b: ("relabel", suggested[b])}
        page.reload()  # the page shows what relabel.csv holds now
        assert page.get_attribute(f"tr[data-row='{a}'] button[data-decision=keep]", "class") == "on"
        assert browser_page.external == [] and browser_page.console_errors == []
        bad = page.evaluate("""async () => (await fetch('api/decisions', {method: 'POST', headers: {'Content-Type': 'application/json'},
                               body: JSON.stringify([{row: 1, decision: 'maybe'}])})).status""")
        assert bad == 422
    finally:
        server.should_exit = True
        thread.join(10)


def test_combine_keeps_a_weak_member_from_drowning_a_good_one():
    """Temperature + log-loss weights: the average ranks planted errors at least as well as its best member."""
    import numpy as np

    from textclf.services.audit.rank import combine, quality_order

    rng = np.random.default_rng(0)
    n, k = 600, 3
    true = rng.integers(0, k, n)
    given = true.copy()
    flipped = rng.choice(n, 60, replace=False)
    given[flipped] = (true[flipped] + 1) % k
    good = np.full((n, k), 0.1)
    good[np.arange(n), true] = 0.8
    good = good + rng.uniform(0, 0.05, (n, k))
    noise = rng.dirichlet(np.ones(k) * 0.2, n)  # a confident, useless member
    proba, weights = combine({"good": good / good.sum(1, keepdims=True), "noise": noise}, given)
    assert weights["good"] > 0.8 > weights["noise"]

    def recall(p):
        return len(set(quality_order(given, p)[:60].tolist()) & set(flipped.tolist())) / 60

    assert recall(proba) >= recall(good / good.sum(1, keepdims=True)) >= 0.9
    assert recall((good / good.sum(1, keepdims=True) + noise) / 2) < recall(proba)  # what a plain mean would do


@pytest.mark.slow  # loads the MiniLM encoder (torch)
def test_embeddings_folds_read_the_cache(tmp_path, cache_dir, caplog):
    """The embeddings family encodes the file once; its folds load their rows from the embedding cache."""
    import logging

    from textclf.families.common.cache import EmbeddingCache

    data = tmp_path / "train.csv"
    synthetic(data, rows=60, flip=0.0)
    caplog.set_level(logging.INFO, logger="textclf.families.common.encoders")
    invoke("audit", "--data_path", data, "--family", "embeddings", "--folds", "3", "--output_dir", tmp_path / "audit")
    keys = {e["key"] for e in EmbeddingCache().entries()}
    assert len(keys) == 1 + 2 * 3  # the whole file, then each fold's train and held-out part
    encoded = [r.getMessage() for r in caplog.records if "encoded" in r.getMessage()]
    assert len(encoded) == 1 and "encoded 62 docs" in encoded[0]  # one encode: the folds only load
    summary = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert summary["weights"] == {"embeddings": 1.0}
