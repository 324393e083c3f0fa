"""A textclf reader plug-in: labelled rows from a SQLite database instead of a file.

A reader turns the string given as ``--train_path``/``--valid_path``/``--test_path`` into rows
``(row_number, text, label)``; this one understands ``DATABASE::TABLE`` and ``DATABASE::QUERY``
(a ``SELECT``/``WITH`` statement). The text and label columns are ``data.text_column`` and
``data.label_column`` (default ``text`` and ``label``); a query can rename them with ``AS``.
Only the Python standard library is needed; the database is opened read-only.

Run it with any family (here the example plug-in family next to this file)::

    textclf train --code examples/plugins/sqlite_reader.py --code examples/plugins/tfidf_logreg.py \\
        tfidf_logreg --set data.reader=sqlite \\
        --train_path tweets.sqlite::train --valid_path tweets.sqlite::valid \\
        --test_path "tweets.sqlite::SELECT body AS text, label FROM test WHERE lang = 'en'" \\
        --output_dir models/tfidf_sqlite

meta.json then records the SHA-256 of the rows read (a reader's source need not be a file).
``textclf predict`` reads files as before; the reader is used for training data only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from textclf.core.errors import DataError
from textclf.core.registry import register_reader

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


@register_reader("sqlite")
def read_sqlite(source: str, text_column: str, label_column: str) -> Iterator[tuple[int, object, object]]:
    """Yield ``(row_number, text, label)`` for every row of a table or query (rows numbered from 1)."""
    database, query = split_source(str(source))
    if not database.is_file():
        raise DataError(database, "SQLite database not found")
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        try:
            cursor = connection.execute(query)
        except sqlite3.Error as exc:  # no such table, syntax error, not a database ...
            raise DataError(source, f"SQLite: {exc}") from None
        columns = [d[0] for d in cursor.description or ()]
        for column, what in ((text_column, "text"), (label_column, "label")):
            if column not in columns:
                raise DataError(source, f"missing {what} column {column!r} (columns: {', '.join(columns)}); "
                                        f"set data.{what}_column or rename it in a query with AS")
        text_at, label_at = columns.index(text_column), columns.index(label_column)
        for number, row in enumerate(cursor, start=1):
            yield number, row[text_at], row[label_at]
    finally:
        connection.close()
