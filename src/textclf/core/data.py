"""The built-in data formats; reading, checking, splitting and downsampling labelled text data.

Labelled formats: CSV/TSV with a header (column names configurable), JSONL
(``{"text": ..., "label": ...}``) and fastText (``__label__x text``).
Multi-label data (``data.task``, :func:`labelled_dataset`): JSONL ``{"text": ..., "labels": ["a", "b"]}``,
a CSV/TSV label cell ``a|b`` split by ``data.label_separator``, or fastText lines with several
``__label__`` prefixes; a :class:`Dataset` then holds one sorted tuple of labels per row.
Unlabelled input for prediction: plain text (one document a line), CSV/TSV or JSONL
with a text column (or fastText, its labels ignored). Predictions are written as plain text
(one label a line), CSV or JSONL (with the probabilities).

Every format, these built-in ones and a plug-in's (:func:`textclf.core.registry.register_format`),
is a :class:`textclf.core.registry.Format` in the format registry: :func:`read_labelled`,
:func:`iter_texts`, :func:`write_labelled` and :func:`textclf.core.predictor.predict_file`
dispatch through it, and the format comes from the file extension unless given (:func:`resolve_format`).

Every problem raises :class:`textclf.core.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from textclf.core.atomic import atomic_open
from textclf.core.errors import DataError
from textclf.core.registry import Format, format_for_path, get_format, register_format

FASTTEXT_PREFIX = "__label__"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


#: ``data.task``: ``auto`` detects label sets in the data (see :func:`labelled_dataset`)
TASKS = ("auto", "multiclass", "multilabel")
MULTICLASS, MULTILABEL = "multiclass", "multilabel"
#: how label sets are joined where one string must hold them (txt/CSV predictions) unless ``data.label_separator`` says
DEFAULT_LABEL_SEPARATOR = "|"


@dataclass
class Dataset:
    """Texts with their labels, as read from ``path``.

    ``task`` is ``multiclass`` (``labels[i]`` is one label, a string) or ``multilabel``
    (``labels[i]`` is a sorted tuple of distinct labels, empty for a text with none).
    ``weights``: per-row sample weights, or None (every row counts once). Files never carry them;
    ``textclf distill`` sets them to give a family that honours weights (``Family.weights``)
    a teacher's soft labels: one row per (text, class) weighted by the teacher's probability.
    """

    texts: list[str]
    labels: list
    path: str = ""
    line_numbers: list[int] = field(default_factory=list)
    task: str = MULTICLASS
    weights: list[float] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multilabel(self) -> bool:
        """Whether every row holds a label set (``task == "multilabel"``)."""
        return self.task == MULTILABEL

    @property
    def label_set(self) -> list[str]:
        """Sorted distinct labels (of every set, for multi-label data)."""
        if self.multilabel:
            return sorted({label for labels in self.labels for label in labels})
        return sorted(set(self.labels))

    def subset(self, indices: Sequence[int]) -> Dataset:
        """A new dataset holding the rows at ``indices`` (in that order)."""
        lines = [self.line_numbers[i] for i in indices] if self.line_numbers else []
        weights = [self.weights[i] for i in indices] if self.weights is not None else None
        return Dataset([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.path, lines, self.task,
                       weights)


def resolve_format(path: str | Path, fmt: str | None, capability: str) -> Format:
    """The registered format that does ``capability`` (``read``, ``texts``, ``predictions``, ``write``) for ``path``.

    ``fmt`` names it (an unknown name, or one that cannot do ``capability``, is a one-line error
    listing the formats that can); by default the extension picks it
    (:func:`textclf.core.registry.format_for_path`): ``.txt`` is fastText for labelled data and
    plain text for prediction input and output.
    """
    return get_format(fmt, capability) if fmt else format_for_path(path, capability)


def labelled_format(path: str | Path, fmt: str | None = None, reader: str | None = None) -> Format:
    """The format that reads labelled ``path``: the one ``reader`` names (``data.reader``), else :func:`resolve_format`."""
    if reader:
        from textclf.core.registry import get_reader

        get_reader(reader)  # an unknown reader: the data.reader error
        return get_format(reader, "read")
    return resolve_format(path, fmt, "read")


def detect_format(path: str | Path, fmt: str | None = None, labelled: bool = True) -> str:
    """The name of the format of ``path`` for labelled data (or, ``labelled=False``, for prediction input)."""
    return resolve_format(path, fmt, "read" if labelled else "texts").name


_UTF16_HINT = "re-encode it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 IN > OUT"
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _decode_line(path: Path, number: int, raw: bytes) -> str:
    """One raw line as text; UTF-16/32, a NUL byte or invalid UTF-8 raise DataError naming the line."""
    if number == 1:
        for bom, name in _BOMS:
            if raw.startswith(bom):
                hint = _UTF16_HINT.replace("UTF-16", name)
                raise DataError(path, f"the file is {name} (it starts with a {name} byte-order mark); {hint}", number)
    if b"\x00" in raw:
        if raw.count(b"\x00") * 3 >= len(raw.rstrip(b"\r\n")) > 1:
            raise DataError(path, f"NUL bytes between the characters: the file looks like UTF-16 without a byte-order "
                            f"mark; {_UTF16_HINT}", number)
        column = raw.index(b"\x00") + 1
        raise DataError(path, f"NUL byte at column {column}; the file looks binary", number)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"invalid UTF-8 at byte {exc.start + 1} of the line; re-encode the file as UTF-8", number) from None


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a file")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with the newline kept; invalid UTF-8 and NUL bytes raise DataError."""
    _check_readable(path)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, _decode_line(path, number, raw).replace("\r\n", "\n")


_BLOCK_BYTES = 1 << 22


def _plain_lines(path: Path) -> Iterator[str]:
    """The lines of a plain-text file without line ends (trailing ``\\r`` removed too), read in large blocks.

    Same lines and errors as ``_decoded_lines`` followed by stripping the line ends, but
    each block of whole lines is checked, decoded and split at once (prediction input can
    be millions of short lines). A block with a NUL byte or invalid UTF-8 is re-checked
    line by line, so the error names the first bad line.
    """
    _check_readable(path)
    number = 0
    rest = b""
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(_BLOCK_BYTES)
            if chunk:
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
            elif rest:
                block, rest = rest, b""
            else:
                break
            if number == 0 and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            try:
                if b"\x00" in block:
                    raise ValueError("NUL byte")
                text = block.decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                for i, raw in enumerate(block.split(b"\n"), start=number + 1):
                    _decode_line(path, i, raw)
                raise
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()
            if "\r" in text:
                lines = [line.rstrip("\r") for line in lines]
            number += len(lines)
            yield from lines


def _check_not_empty(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(path, "file is empty")


class _LineCounter:
    """Wraps a line iterator for ``csv.reader``; remembers the physical line last read and the lines of the current row."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self._lines = lines
        self.line = 0
        self.row_lines: list[str] = []

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        self.line, text = next(self._lines)
        self.row_lines.append(text)
        return text


def _unterminated_quote(lines: list[str], delimiter: str) -> bool:
    """Whether these physical lines of one CSV row end inside a quoted field (a quote never closed)."""
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, str], list[str]]]:
    """Yield ``(start_line, row, header)`` for every data row of a CSV/TSV file."""
    counter = _LineCounter(_decoded_lines(path))
    reader = csv.reader(counter, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "file is empty") from None
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV: {exc}", counter.line) from None
    header = [h.strip() for h in header]
    start = counter.line + 1
    while True:
        counter.row_lines = []
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(path, f"malformed CSV: {exc}", start) from None
        spans = counter.line > start
        if spans and _unterminated_quote(counter.row_lines, delimiter):
            raise DataError(path, f"unterminated quote: the quoted field that starts on this line is never closed "
                            f"(it runs to the end of the file, line {counter.line}); close it, or double a quote "
                            f"inside a field (\"\")", start)
        if not row:
            yield start, {}, header
        elif len(row) != len(header):
            where = f" (the row runs to line {counter.line}: check for an unbalanced quote)" if spans else ""
            raise DataError(path, f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}{where}", start)
        else:
            yield start, dict(zip(header, row, strict=True)), header
        start = counter.line + 1


def _require_column(path: Path, header: list[str], column: str, what: str, hint: str | None = None) -> None:
    if column not in header:
        hint = hint or f"set data.{what}_column"
        raise DataError(path, f"missing {what} column {column!r} (columns: {', '.join(header)}); {hint}", 1)


def _csv_reader(delimiter: str):
    def read(path: str | Path, text_column: str, label_column: str) -> Iterator[tuple[int, object, object]]:
        path = Path(path)
        for number, row, header in _csv_rows(path, delimiter):
            _require_column(path, header, text_column, "text")
            _require_column(path, header, label_column, "label")
            if row:
                yield number, row[text_column], row[label_column]

    return read


def _csv_texts(delimiter: str):
    def texts(path: str | Path, text_column: str = "text") -> Iterator[str]:
        path = Path(path)
        _check_not_empty(path)
        for _number, row, header in _csv_rows(path, delimiter):
            _require_column(path, header, text_column, "text", hint="pass --text_column NAME")
            yield row.get(text_column, "") if row else ""

    return texts


def read_jsonl(path: str | Path, text_column: str, label_column: str) -> Iterator[tuple[int, object, object]]:
    """``{"text": ..., "label": ...}`` per line (blank lines skipped).

    A list of labels is a label set (multi-label data); with the default ``label_column``
    (``label``), a line without that key but with ``labels`` reads that one.
    """
    path = Path(path)
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        obj = _parse_json_line(path, number, line)
        label_key = "labels" if label_column == "label" and "label" not in obj and "labels" in obj else label_column
        for column, what in ((text_column, "text"), (label_key, "label")):
            if column not in obj:
                raise DataError(path, f"missing {what} key {column!r} (keys: {', '.join(obj)})", number)
        text = _jsonl_text(path, number, obj[text_column])
        label = obj[label_key]
        for value in (label if isinstance(label, list) else [label]):
            _check_unicode(path, number, value)
        yield number, text, label


def _jsonl_text(path: Path, number: int, text: object) -> str:
    """A JSONL line's text, the same rule for train and predict: a string (:func:`check_text`) of valid Unicode.

    ``null``, a number, a list... read ``text must be a string, found null`` whichever command reads the file.
    """
    check_text(path, number, text)
    _check_unicode(path, number, text)
    return text


def _check_unicode(path: Path, number: int, value: object) -> None:
    """A JSON string escape can make a lone surrogate (``"\\ud800"``), which is not text: DataError."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(path, f"invalid text: a lone surrogate \\u{ord(value[exc.start]):04x} "
                            "(a JSON escape that is not a Unicode character)", number) from None


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def texts_jsonl(path: str | Path, text_column: str = "text") -> Iterator[str]:
    """The ``text_column`` of every JSONL line; a blank line gives ``""``, a text that is not a string is refused."""
    path = Path(path)
    for number, line in _decoded_lines(path):
        if not line.strip():
            yield ""
            continue
        obj = _parse_json_line(path, number, line)
        if text_column not in obj:
            raise DataError(path, f"missing text key {text_column!r} (keys: {', '.join(obj)}); pass --text_column NAME",
                            number)
        yield _jsonl_text(path, number, obj[text_column])


def read_fasttext(path: str | Path, text_column: str = "text",
                  label_column: str = "label") -> Iterator[tuple[int, str, str | tuple[str, ...]]]:
    """``__label__x text`` per line (blank lines skipped); the column names do not apply.

    A line's label is a string when it has one ``__label__``, else the tuple of them (several:
    a label set; none: the empty tuple), which :func:`labelled_dataset` reads by ``data.task``.
    """
    path = Path(path)
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        labels, text = parse_fasttext_labels(path, number, line)
        yield number, text, labels[0] if len(labels) == 1 else labels


def texts_fasttext(path: str | Path, text_column: str = "text") -> Iterator[str]:
    """The text of every fastText line (its labels dropped; a line without a label is all text)."""
    path = Path(path)
    for number, line in _decoded_lines(path):
        if line.strip().startswith(FASTTEXT_PREFIX):
            yield parse_fasttext_line(path, number, line)[1]
        else:
            yield line.strip()


def texts_plain(path: str | Path, text_column: str = "text") -> Iterator[str]:
    """Plain text: every line is one document, empty lines included (the column name does not apply)."""
    return _plain_lines(Path(path))


def read_labelled(
    path: str | Path,
    fmt: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    min_classes: int = 2,
    reader: str | None = None,
    task: str = MULTICLASS,
    label_separator: str | None = None,
) -> Dataset:
    """Read a labelled file into a :class:`Dataset`; every defect raises DataError with the line.

    ``reader`` names a registered reader (``data.reader``) and ``fmt`` a registered format
    (``data.format``, ``--data_format``): a plug-in's may read a database or an API, and
    ``path`` is whatever it understands; by default the format of the file's extension reads it.
    ``task`` and ``label_separator`` (``data.task``, ``data.label_separator``): see
    :func:`labelled_dataset`; the default reads single labels as always.
    """
    source = labelled_format(path, fmt, reader)
    if source.files:
        path = Path(path)
        _check_not_empty(path)
    else:
        path = str(path)
    rows = source.part("read")(path, text_column, label_column)
    return labelled_dataset(rows, path, min_classes, task, label_separator)


def check_text(path: str | Path, number: int | None, text: object) -> str:
    """``text`` when it is a string, else DataError naming the row (the rule for every text a model reads).

    The type is named as JSON names it (``null``, ``number``, ``array``...), whether the text came
    from a JSONL file (train or predict) or from memory, so the same mistake reads the same.
    """
    if not isinstance(text, str):
        raise DataError(path, f"text must be a string, found {_json_type(text)}", number)
    return text


def labelled_dataset(rows: Iterable[tuple[int, object, object]], path: str | Path, min_classes: int = 2,
                     task: str = MULTICLASS, label_separator: str | None = None) -> Dataset:
    """Check ``(number, text, label)`` rows and gather them into a :class:`Dataset`: the rules every labelled input meets.

    A row needs a non-blank label (a string or an integer, kept as its stripped string) and a
    non-blank string text; the data needs a row and ``min_classes`` distinct labels. Each problem
    raises DataError naming ``path`` and the row's ``number``. :func:`read_labelled` applies this to
    every file's rows and ``TextClassifier.fit`` (:mod:`textclf.services.estimator`) to in-memory
    texts and labels, so the same defect reads the same either way.

    ``task`` (``data.task``): ``multiclass`` reads one label a row as always (a fastText line's
    first ``__label__`` wins); ``multilabel`` reads a label set a row: a list (JSONL), a tuple (a
    reader's several labels, fastText's ``__label__`` prefixes), a string split at
    ``label_separator`` when one is set, a single label as a set of one, a row without a label as
    the empty set; ``auto`` is multi-label when any row holds a set. Refused: an empty label in a
    set, and (``auto``) a single label among JSON lists, where it is unclear which was meant.
    """
    if task not in TASKS:
        raise DataError(path, f"unknown data.task {task!r}; use {', '.join(TASKS)}")
    texts: list[str] = []
    labels: list = []
    lines: list[int] = []
    first: dict[str, tuple] = {}  # kind (set, list, single, empty) -> (number, label) of its first row
    for number, text, label in rows:
        if task != MULTICLASS and label_separator and isinstance(label, str) and label_separator in label:
            label = tuple(label.split(label_separator))
        if isinstance(label, tuple) and not label and task != MULTILABEL:
            first.setdefault("no label", (number, ()))  # a fastText line without __label__
            if task == MULTICLASS:
                break
        if task == MULTICLASS and isinstance(label, tuple):  # fastText: the first label wins (as before)
            label = label[0]
        if isinstance(label, list | tuple):
            if task == MULTICLASS:
                raise DataError(path, f"a list of labels in multi-class data (data.task=multiclass): {label!r}; "
                                "set data.task to multilabel or auto", number)
            kinds = ("set", "list") if isinstance(label, list) else ("set",) if label else ()
            label = _label_tuple(path, number, label)
        elif label is None or (isinstance(label, str) and not label.strip()):
            if task == MULTICLASS:
                raise DataError(path, "empty label", number)
            kinds, label = ("empty",), ()
        elif isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(path, f"label must be a string or integer, found {type(label).__name__}", number)
        else:
            kinds, label = ("single",), str(label).strip()
        for kind in kinds:
            first.setdefault(kind, (number, label))
        check_text(path, number, text)
        if not text.strip():
            raise DataError(path, "empty text", number)
        texts.append(text)
        labels.append(label)
        lines.append(number)
    resolved = task if task != "auto" else (MULTILABEL if "set" in first else MULTICLASS)
    if resolved == MULTICLASS and "no label" in first:
        raise DataError(path, f"no label: a fastText line must start with {FASTTEXT_PREFIX}<label> "
                        "(a line without one is valid only in multi-label data)", first["no label"][0])
    if not texts:
        raise DataError(path, "no data rows")
    if resolved == MULTICLASS and "empty" in first:
        raise DataError(path, "empty label", first["empty"][0])
    if task == "auto" and "list" in first and "single" in first:
        (n_list, _), (n_single, single) = first["list"], first["single"]
        raise DataError(path, f"mixed labels: a single label ({single!r}) on line {n_single}, a list of labels on line "
                        f"{n_list}; write every label as a list, or set data.task=multilabel (a single label is a set "
                        "of one)", max(n_single, n_list))
    if resolved == MULTILABEL:
        labels = [(label,) if isinstance(label, str) else label for label in labels]
    ds = Dataset(texts, labels, str(path), lines, resolved)
    if min_classes and len(ds.label_set) < min_classes:
        raise DataError(path, f"found {len(ds.label_set)} class(es) ({', '.join(ds.label_set)}); need at least {min_classes}")
    return ds


def _label_tuple(path: str | Path, number: int, labels: Sequence[object]) -> tuple[str, ...]:
    """A label set as a sorted tuple of distinct stripped strings; an empty or non-string label in it is a DataError."""
    out = set()
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataError(path, f"label must be a string or integer, found {type(label).__name__} in the label set", number)
        label = str(label).strip()
        if not label:
            raise DataError(path, f"empty label in the label set {list(labels)!r}", number)
        out.add(label)
    return tuple(sorted(out))


def _parse_json_line(path: Path, number: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg} at column {exc.colno}", number) from None
    except RecursionError:
        raise DataError(path, "invalid JSON: nested too deeply", number) from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, found {type(obj).__name__}", number)
    return obj


def parse_fasttext_labels(path: str | Path, number: int, line: str) -> tuple[tuple[str, ...], str]:
    """Split a fastText line into (every ``__label__`` in order, the other tokens joined by one space).

    fastText's own reading: a token with the prefix anywhere in the line is a label. A bare
    ``__label__`` is a DataError.
    """
    labels, words = [], []
    for token in line.split():
        if token.startswith(FASTTEXT_PREFIX):
            if len(token) == len(FASTTEXT_PREFIX):
                raise DataError(path, "empty label after __label__", number)
            labels.append(token[len(FASTTEXT_PREFIX):])
        else:
            words.append(token)
    return tuple(labels), " ".join(words)


def parse_fasttext_line(path: str | Path, number: int, line: str) -> tuple[str, str]:
    """Split a fastText line ``__label__x [__label__y] text`` into (label, text); the first label wins."""
    tokens = line.split()
    if not tokens or not tokens[0].startswith(FASTTEXT_PREFIX):
        raise DataError(path, f"no label: a fastText line must start with {FASTTEXT_PREFIX}<label>", number)
    label = tokens[0][len(FASTTEXT_PREFIX):]
    rest = [t for t in tokens[1:] if not t.startswith(FASTTEXT_PREFIX)]
    if not label:
        raise DataError(path, "empty label after __label__", number)
    return label, " ".join(rest)


def iter_texts(
    path: str | Path,
    fmt: str | None = None,
    text_column: str = "text",
) -> Iterator[str]:
    """Stream the texts of an unlabelled (or labelled) file, one per input record.

    The ``texts`` part of the format (``fmt`` or the extension, see :func:`resolve_format`)
    yields them. Plain text yields one document per line, including empty lines (as ``""``), so
    predictions stay aligned line-for-line. Labels in fastText or CSV input are ignored.
    A JSONL ``text`` that is not a string (a number, null, a list) or not valid Unicode is
    rejected as training rejects it; a file without records yields nothing
    (:func:`textclf.core.predictor.predict_file` refuses that, see :func:`check_has_records`).
    """
    source = resolve_format(path, fmt, "texts")
    if source.files:
        path = Path(path)
        if not path.exists():
            raise DataError(path, "file not found")
    else:
        path = str(path)
    yield from source.part("texts")(path, text_column)


def check_has_records(path: str | Path, records: int) -> None:
    """DataError when an input file gave no record: an empty file, or a CSV with only its header (as training says)."""
    if records == 0:
        path = Path(path)
        empty = path.is_file() and path.stat().st_size <= 3  # nothing, or a byte-order mark
        raise DataError(path, "file is empty" if empty else "no data rows")


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Group an iterable into lists of at most ``size`` items (at least one)."""
    it = iter(items)
    size = max(1, size)
    while batch := list(itertools.islice(it, size)):
        yield batch


def row_labels(row) -> tuple:
    """The labels of one row of ``Dataset.labels``: a label set's labels, or the single label."""
    return tuple(row) if isinstance(row, tuple | list) else (row,)


def first_unknown_label(labels: Sequence, known: Iterable[str],
                        line_numbers: Sequence[int] | None = None) -> tuple[str, int | None] | None:
    """The first label of ``labels`` (single labels or label sets, in row order) not in ``known``, with its row's
    file line (from ``line_numbers``; None when not known); None when every label is known."""
    known = set(known)
    for i, row in enumerate(labels):
        for label in row_labels(row):
            if label not in known:
                return label, (line_numbers[i] if line_numbers and i < len(line_numbers) else None)
    return None


def unknown_label_note(ds: Dataset, model_labels: Iterable[str]) -> str | None:
    """A one-line note when ``ds`` holds labels the model cannot predict (scored as errors, not refused); None when
    every label is known. ``evaluate`` and ``leaderboard`` print it on stderr."""
    first = first_unknown_label(ds.labels, model_labels, ds.line_numbers)
    if first is None:
        return None
    known = set(model_labels)
    rows = sum(1 for row in ds.labels if any(label not in known for label in row_labels(row)))
    where = f"{ds.path}:{first[1]}" if first[1] is not None else ds.path
    return (f"note: {rows} row(s) of {ds.path} hold a label the model does not know (first: {first[0]!r} at {where}); "
            "the model never predicts it, so those rows count as errors")


def check_labels_known(train: Dataset, other: Dataset) -> None:
    """Raise DataError at the first row of ``other`` whose label (or, multi-label, a label of whose set) never occurs in ``train``."""
    first = first_unknown_label(other.labels, train.label_set, other.line_numbers)
    if first is not None:
        label, line = first
        raise DataError(
            other.path,
            f"label {label!r} does not occur in the training data {train.path} (train labels: {', '.join(train.label_set)})",
            line,
        )


def sha256_files(paths: Iterable[str | Path | None]) -> str:
    """One SHA-256 over the bytes of all given files (None entries are skipped)."""
    digest = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_datasets(datasets: Iterable[Dataset | None]) -> str:
    """One SHA-256 over the texts and labels of datasets (for data a reader did not take from files)."""
    digest = hashlib.sha256()
    for ds in datasets:
        if ds is None:
            continue
        for text, label in zip(ds.texts, ds.labels, strict=True):
            label = DEFAULT_LABEL_SEPARATOR.join(label) if isinstance(label, tuple) else label
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def stratified_split(
    ds: Dataset, valid_frac: float = 0.1, test_frac: float = 0.1, seed: int = 13
) -> tuple[Dataset, Dataset, Dataset]:
    """Deterministic stratified train/valid/test split by ``sklearn.model_selection.train_test_split``.

    Test is split off first (``test_frac`` of the rows), then valid from the rest (``valid_frac``
    of all rows), each with ``stratify`` on the labels and ``random_state=seed``; scikit-learn
    rounds the part sizes up and shares them over the classes in proportion, and each part comes
    out shuffled. Same input and seed, same output. A fraction of 0 leaves that part empty. A class
    with fewer than 2 rows left for a split, or a part too small to hold every class, is a one-line
    :class:`DataError`. Earlier versions rounded ``n * frac`` per class and shuffled with
    :mod:`random`, so a seed gives another (as stratified) split than theirs.
    """
    if not 0 <= valid_frac < 1 or not 0 <= test_frac < 1 or valid_frac + test_frac >= 1:
        raise DataError(ds.path, f"bad split fractions valid={valid_frac} test={test_frac}: each in [0,1), sum below 1")
    rest, test_idx = _split_off(ds, list(range(len(ds))), test_frac, seed, "test")
    train_idx, valid_idx = _split_off(ds, rest, valid_frac / (1 - test_frac), seed, "valid")
    return ds.subset(train_idx), ds.subset(valid_idx), ds.subset(test_idx)


def _split_off(ds: Dataset, indices: list[int], frac: float, seed: int, part: str) -> tuple[list[int], list[int]]:
    """``indices`` cut into (rest, ``part``) with ``frac`` of them in ``part``, stratified; refusals as one-line errors."""
    if frac == 0 or not indices:
        return indices, []
    from sklearn.model_selection import train_test_split  # imported on use: reading data does not need it

    if ds.multilabel:  # label sets: no stratification (scikit-learn's needs one class a row), a seeded shuffle split
        rest, held = train_test_split(indices, test_size=frac, random_state=seed, shuffle=True)
        return [int(i) for i in rest], [int(i) for i in held]
    labels = [ds.labels[i] for i in indices]
    counts = Counter(labels)
    label, fewest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if fewest < 2:
        raise DataError(ds.path, f"class {label!r} has {fewest} row left for the stratified {part} split; every class needs "
                                 f"at least 2 there (more rows of it, or --{part}_frac 0)")
    try:
        rest, held = train_test_split(indices, test_size=frac, random_state=seed, shuffle=True, stratify=labels)
    except ValueError as e:
        raise DataError(ds.path, f"cannot split a stratified {part} part of {frac:.4g} off {len(indices)} rows "
                                 f"of {len(counts)} classes: {' '.join(str(e).split())}") from None
    return [int(i) for i in rest], [int(i) for i in held]


def balanced_downsample(labels: Sequence[str], seed: int = 13, per_class: int | None = None) -> list[int]:
    """Indices of a class-balanced sample: every class cut to the smallest class size (or ``per_class``).

    Deterministic for a seed; the returned indices keep the original order.
    """
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if not by_class:
        return []
    n = min(len(v) for v in by_class.values()) if per_class is None else per_class
    chosen: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label]
        chosen += rng.sample(idx, min(n, len(idx)))
    return sorted(chosen)


def label_stats(ds: Dataset) -> dict:
    """Counts and shares per label, plus text-length summary (multi-label: texts per label, and the mean labels a text)."""
    counts = Counter(label for labels in ds.labels for label in labels) if ds.multilabel else Counter(ds.labels)
    n = len(ds)
    lengths = sorted(len(t) for t in ds.texts)
    extra = {"task": ds.task, "label_cardinality": round(sum(map(len, ds.labels)) / n, 3) if n else 0} if ds.multilabel else {}
    return {**extra,
        "path": ds.path,
        "rows": n,
        "classes": len(counts),
        "labels": {k: {"count": counts[k], "share": round(counts[k] / n, 4)} for k in sorted(counts)},
        "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 3) if counts else None,
        "mean_chars": round(sum(lengths) / n, 1) if n else 0,
        "median_chars": lengths[n // 2] if n else 0,
    }


def format_label_stats(stats: dict) -> str:
    """A human-readable table of :func:`label_stats`."""
    cardinality = f", {stats['label_cardinality']} labels a text (multi-label)" if "label_cardinality" in stats else ""
    out = [f"{stats['path']}: {stats['rows']} rows, {stats['classes']} classes, "
           f"mean {stats['mean_chars']} chars, imbalance {stats['imbalance_ratio']}{cardinality}"]
    width = max(len(k) for k in stats["labels"]) if stats["labels"] else 5
    for label, v in stats["labels"].items():
        out.append(f"  {label:<{width}}  {v['count']:>8}  {v['share']:7.2%}")
    return "\n".join(out)


def write_labelled(path: str | Path, ds: Dataset, fmt: str | None = None) -> None:
    """Write a dataset atomically in the format ``fmt`` (default: from the extension).

    The built-in ones: CSV/TSV (header ``text,label``), JSONL or fastText.
    """
    path = Path(path)
    write = resolve_format(path, fmt, "write").part("write")
    with atomic_open(path, "w") as fh:
        write(fh, ds)


def _csv_writer(delimiter: str):
    def write(fh: TextIO, ds: Dataset) -> None:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        # QUOTE_MINIMAL leaves a field with a lone "\r" unquoted, which no CSV reader takes back: quote those rows
        quoted = csv.writer(fh, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["text", "label"])
        for text, label in zip(ds.texts, ds.labels, strict=True):
            row = (text, DEFAULT_LABEL_SEPARATOR.join(label) if ds.multilabel else label)
            (quoted if "\r" in row[0] or "\r" in row[1] else writer).writerow(row)

    return write


def write_jsonl(fh: TextIO, ds: Dataset) -> None:
    """``{"text": ..., "label": ...}`` per line (multi-label: ``{"text": ..., "labels": [...]}``)."""
    key = "labels" if ds.multilabel else "label"
    for text, label in zip(ds.texts, ds.labels, strict=True):
        fh.write(json.dumps({"text": text, key: list(label) if ds.multilabel else label}, ensure_ascii=False) + "\n")


def write_fasttext(fh: TextIO, ds: Dataset) -> None:
    """``__label__x text`` per line (spaces in a label become ``_``, the text's whitespace one space; multi-label: every label)."""
    for text, label in zip(ds.texts, ds.labels, strict=True):
        prefixes = "".join(f"{FASTTEXT_PREFIX}{one.replace(' ', '_')} " for one in (label if ds.multilabel else (label,)))
        fh.write(f"{prefixes}{' '.join(text.split())}\n")


# --------------------------------------------------------------------------- prediction writers
# A multi-label model predicts a tuple of labels a text; :func:`textclf.core.predictor.predict_file` then opens the
# writer with ``separator=`` (the model's ``data.label_separator``, default ``|``), which joins a set where one
# string must hold it.
def predictions_txt(fh: TextIO, labels: Sequence[str], separator: str | None = None) -> Callable[[list[str], Any], None]:
    """One predicted label a line (no probabilities: the fast path); multi-label: the set joined by ``separator``."""
    def write(predicted: list[str], proba: Any = None) -> None:
        if separator is not None:
            predicted = [separator.join(label) for label in predicted]
        fh.write("".join([label + "\n" for label in predicted]))  # one write per batch: it must keep up with the model

    return write


def predictions_csv(fh: TextIO, labels: Sequence[str], separator: str | None = None) -> Callable[[list[str], Any], None]:
    """A header ``label,p_<class>...``, then the predicted label and one probability per class a row.

    Multi-label: the header's first column is ``labels`` and holds the set joined by ``separator``.
    """
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["label" if separator is None else "labels", *[f"p_{label}" for label in labels]])

    def write(predicted: list[str], proba: Any) -> None:
        for label, probs in zip(predicted, proba, strict=True):
            writer.writerow([label if separator is None else separator.join(label), *[f"{p:.6f}" for p in probs]])

    return write


def predictions_jsonl(fh: TextIO, labels: Sequence[str], separator: str | None = None) -> Callable[[list[str], Any], None]:
    """``{"label": ..., "probabilities": {class: p, ...}}`` a line; multi-label: ``{"labels": [...], "probabilities": ...}``."""
    labels = list(labels)
    key = "label" if separator is None else "labels"

    def write(predicted: list[str], proba: Any) -> None:
        for label, probs in zip(predicted, proba, strict=True):
            probabilities = dict(zip(labels, map(float, probs), strict=True))
            fh.write(json.dumps({key: label if separator is None else list(label), "probabilities": probabilities}) + "\n")

    return write


# --------------------------------------------------------------------------- the built-in formats
#: registered in this order (the order of every command's format choices)
BUILTIN_FORMATS = (
    Format(name="txt", extensions=(".txt",), texts=texts_plain, predictions=predictions_txt, probabilities=False,
           description="plain text: one document a line to predict; one label a line as predictions"),
    Format(name="csv", extensions=(".csv",), read=_csv_reader(","), texts=_csv_texts(","), predictions=predictions_csv,
           write=_csv_writer(","), description="comma-separated with a header (text and label columns)"),
    Format(name="tsv", extensions=(".tsv", ".tab"), read=_csv_reader("\t"), texts=_csv_texts("\t"), write=_csv_writer("\t"),
           description="tab-separated with a header (text and label columns)"),
    Format(name="jsonl", extensions=(".jsonl", ".ndjson", ".json"), read=read_jsonl, texts=texts_jsonl,
           predictions=predictions_jsonl, write=write_jsonl, description='one JSON object a line ({"text": ..., "label": ...})'),
    Format(name="fasttext", extensions=(".txt", ".ft", ".fasttext"), read=read_fasttext, texts=texts_fasttext,
           write=write_fasttext, description="__label__x text, one document a line"),
)
for _builtin in BUILTIN_FORMATS:
    register_format(_builtin)
