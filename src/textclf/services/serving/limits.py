"""Request limits and the strict parser of ``POST /predict`` bodies: every bad request is a clear 4xx, never a crash.

===========================  ======  ===============================================
problem                      status  example message
===========================  ======  ===============================================
body is not UTF-8            400     request body is not valid UTF-8 (byte 7)
body is not JSON             400     request body is not valid JSON: Expecting value ...
a key twice in an object     400     request body repeats the key 'texts' in one object
a number over 100 characters 400     request body holds a number of 100000 characters; at most 100
body arrives too slowly      400     request body incomplete after 30s (--body_timeout): 5 of 10 bytes
Content-Type not JSON        415     Content-Type must be application/json, got text/plain
body too large               413     request body is over 8388608 bytes (--max_body_bytes)
too many texts               413     300 texts; at most 256 per request (--max_texts)
a text too long              413     texts[2] is 1048576 bytes of UTF-8; at most 65536 (--max_text_bytes)
wrong shape or types         422     texts[1] must be a string, got number
unknown field                422     unknown field 'text'; fields: texts, probabilities
===========================  ======  ===============================================

Request fields are data only: texts go to the model, nothing in a request names a file, a
model or a setting of the server. The parser is strict where JSON parsers usually are lenient:
a repeated key is refused (Python's ``json`` would keep the last one silently, another parser the
first: the same body must not mean two things), and so is a number longer than
:data:`MAX_NUMBER_CHARS` (no field takes a number; ``int()`` of 100,000 digits is quadratic and,
over ``sys.get_int_max_str_digits()``, a ValueError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FIELDS = ("texts", "probabilities")
#: longest number a request may hold (no field is a number: this only bounds the parser's work)
MAX_NUMBER_CHARS = 100
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Limits:
    """Per-request limits (CLI: ``--max_texts``, ``--max_text_bytes``, ``--max_body_bytes``)."""

    max_texts: int = 256
    max_text_bytes: int = 65536
    max_body_bytes: int = 8 * 1024 * 1024


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class PredictRequest:
    """A parsed ``POST /predict`` body."""

    texts: list[str]
    probabilities: bool = True


def _json_type(value: object) -> str:
    return {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def check_texts(texts: object, limits: Limits) -> list[str]:
    """``texts`` if it is a list of at most ``max_texts`` strings of valid Unicode within ``max_text_bytes`` each."""
    if not isinstance(texts, list):
        raise RequestError(422, f"'texts' must be an array of strings, got {_json_type(texts)}")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{len(texts)} texts; at most {limits.max_texts} per request (--max_texts)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{i}] must be a string, got {_json_type(text)}")
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise RequestError(422, f"texts[{i}] is not valid Unicode: a lone surrogate \\u{ord(text[exc.start]):04x} "
                                   f"at character {exc.start}") from None
        if size > limits.max_text_bytes:
            raise RequestError(413, f"texts[{i}] is {size} bytes of UTF-8; at most {limits.max_text_bytes} (--max_text_bytes)")
    return texts


def check_content_type(value: str | None) -> None:
    """Refuse (415) a body that does not say it is JSON: ``application/json``, UTF-8 when a charset is given."""
    media, _, params = (value or "").partition(";")
    if media.strip().lower() != JSON_TYPE:
        got = f"got {media.strip()[:80]}" if media.strip() else "none given"
        raise RequestError(415, f"Content-Type must be {JSON_TYPE}, {got}")
    for param in params.split(";"):
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(415, f"Content-Type charset must be utf-8, got {charset.strip()[:40]}")


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise RequestError(400, f"request body holds a number of {len(text)} characters; at most {MAX_NUMBER_CHARS}")
        return kind(text)

    return parse


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RequestError(400, f"request body repeats the key {key[:80]!r} in one object")
    return obj


def loads_strict(text: str) -> object:
    """``json.loads`` that refuses (400) repeated keys and numbers over :data:`MAX_NUMBER_CHARS` characters."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_number(int), parse_float=_number(float))


def decode_body(body: bytes, limits: Limits, fields: tuple[str, ...] = FIELDS) -> dict:
    """The JSON object of a request body with only ``fields`` and a checked ``texts``; a bad one raises RequestError."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is over {limits.max_body_bytes} bytes (--max_body_bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        obj = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise RequestError(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RequestError(422, f'expected a JSON object {{"texts": [...]}}, got {_json_type(obj)}')
    unknown = [key for key in obj if key not in fields]
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; fields: {', '.join(fields)}")
    if "texts" not in obj:
        raise RequestError(422, "missing field 'texts' (an array of strings)")
    obj["texts"] = check_texts(obj["texts"], limits)
    return obj


def parse_predict_body(body: bytes, limits: Limits) -> PredictRequest:
    """Decode and check a ``POST /predict`` body; a bad one raises RequestError (400, 413 or 422)."""
    obj = decode_body(body, limits)
    probabilities = obj.get("probabilities", True)
    if not isinstance(probabilities, bool):
        raise RequestError(422, f"'probabilities' must be true or false, got {_json_type(probabilities)}")
    return PredictRequest(obj["texts"], probabilities)


#: the fields of a ``POST /explain`` body
EXPLAIN_FIELDS = ("texts", "label")


def parse_explain_body(body: bytes, limits: Limits) -> tuple[list[str], str | None]:
    """Decode and check a ``POST /explain`` body: ``(texts, label)`` (label None: the predicted one)."""
    obj = decode_body(body, limits, EXPLAIN_FIELDS)
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise RequestError(422, f"'label' must be a string or null, got {_json_type(label)}")
    return obj["texts"], label
