"""A textclf format plug-in: labelled rows and texts to predict from a SQLite database instead of a file.

The format turns the string given as a path (``--train_path``, ``--data_path``, ``--input_path``
...) into records; it understands ``DATABASE::TABLE`` and ``DATABASE::QUERY`` (a ``SELECT``/``WITH``
statement). The text and label columns are ``data.text_column`` and ``data.label_column``
(``--text_column``/``--label_column``; default ``text`` and ``label``); a query can rename them
with ``AS``. Only the Python standard library is needed; the database is opened read-only.

Train with any family (here the example plug-in family next to this file)::

    textclf train --code examples/plugins/sqlite_reader.py --code examples/plugins/tfidf_logreg.py \\
        tfidf_logreg --set data.reader=sqlite \\
        --train_path tweets.sqlite::train --valid_path tweets.sqlite::valid \\
        --test_path "tweets.sqlite::SELECT body AS text, label FROM test WHERE lang = 'en'" \\
        --output_dir models/tfidf_sqlite

meta.json then records the SHA-256 of the rows read (a reader's source need not be a file).
The other commands name the format (``--data_format sqlite``, ``--input_format sqlite``)::

    textclf predict --code examples/plugins/sqlite_reader.py --model_path models/tfidf_sqlite \\
        --input_format sqlite --input_path tweets.sqlite::test --output_path predictions.txt
    textclf evaluate --code examples/plugins/sqlite_reader.py --model_path models/tfidf_sqlite \\
        --data_format sqlite --data_path tweets.sqlite::test

(likewise ``leaderboard``, ``report``, ``ensemble`` and ``tune-thresholds``). Prediction i belongs
to row i of the table or query: give a query an ``ORDER BY`` for a stable order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from textclf.core.errors import DataError
from textclf.core.registry import Format, register_format

SEPARATOR = "::"
QUERY_KEYWORDS = ("select", "with")


def split_source(source: str) -> tuple[Path, str]:
    """``"db.sqlite::train"`` -> ``(Path("db.sqlite"), 'SELECT * FROM "train"')``; a query is kept as it is."""
    database, sep, what = source.partition(SEPARATOR)
    what = what.strip()
    if not sep or not database or not what:
        raise DataError(source, f"expected DATABASE{SEPARATOR}TABLE or DATABASE{SEPARATOR}SELECT ... (data.reader=sqlite)")
    if what.split(None, 1)[0].lower() in QUERY_KEYWORDS:
        return Path(database), what
    return Path(database), 'SELECT * FROM "{}"'.format(what.replace('"', '""'))


def _query(source: str, columns: dict[str, str], hint: str) -> Iterator[tuple[int, tuple]]:
    """Yield ``(row_number, values)`` of the table or query, the values of ``columns`` (what -> column name) in order."""
    database, query = split_source(str(source))
    if not database.is_file():
        raise DataError(database, "SQLite database not found")
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        try:
            cursor = connection.execute(query)
        except sqlite3.Error as exc:  # no such table, syntax error, not a database ...
            raise DataError(source, f"SQLite: {exc}") from None
        found = [d[0] for d in cursor.description or ()]
        for what, column in columns.items():
            if column not in found:
                raise DataError(source, f"missing {what} column {column!r} (columns: {', '.join(found)}); "
                                        f"{hint.format(what=what)} or rename it in a query with AS")
        at = [found.index(column) for column in columns.values()]
        for number, row in enumerate(cursor, start=1):
            yield number, tuple(row[i] for i in at)
    finally:
        connection.close()


def read_sqlite(source: str, text_column: str, label_column: str) -> Iterator[tuple[int, object, object]]:
    """Yield ``(row_number, text, label)`` for every row of a table or query (rows numbered from 1)."""
    for number, (text, label) in _query(source, {"text": text_column, "label": label_column}, "set data.{what}_column"):
        yield number, text, label


SQL_TYPES = {type(None): "NULL", int: "INTEGER", float: "REAL", bytes: "BLOB"}


def iter_sqlite_texts(source: str, text_column: str = "text") -> Iterator[str]:
    """Yield the text of every row of a table or query (``textclf predict``): one prediction a row, in order.

    A text that is not a string (NULL, a number, a BLOB) is refused as training refuses it.
    """
    for number, (text,) in _query(source, {"text": text_column}, "pass --text_column NAME"):
        if not isinstance(text, str):
            raise DataError(source, f"text must be a string, found {SQL_TYPES.get(type(text), type(text).__name__)}", number)
        yield text


register_format(Format(name="sqlite", read=read_sqlite, texts=iter_sqlite_texts, files=False,
                       description="rows of a SQLite table or query: DATABASE::TABLE or DATABASE::SELECT ..."))
