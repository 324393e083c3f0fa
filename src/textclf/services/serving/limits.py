"""Request limits and the strict parser of ``POST /predict`` bodies: every bad request is a clear 4xx, never a crash.

===========================  ======  ===============================================
problem                      status  example message
===========================  ======  ===============================================
body is not UTF-8            400     request body is not valid UTF-8 (byte 7)
body is not JSON             400     request body is not valid JSON: Expecting value ...
body too large               413     request body is over 8388608 bytes (--max_body_bytes)
too many texts               413     300 texts; at most 256 per request (--max_texts)
a text too long              413     texts[2] is 1048576 bytes of UTF-8; at most 65536 (--max_text_bytes)
wrong shape or types         422     texts[1] must be a string, got number
unknown field                422     unknown field 'text'; fields: texts, probabilities
===========================  ======  ===============================================

Request fields are data only: texts go to the model, nothing in a request names a file, a
model or a setting of the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

FIELDS = ("texts", "probabilities")


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


def parse_predict_body(body: bytes, limits: Limits) -> PredictRequest:
    """Decode and check a ``POST /predict`` body; a bad one raises RequestError (400, 413 or 422)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is over {limits.max_body_bytes} bytes (--max_body_bytes)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise RequestError(400, "request body is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RequestError(422, f'expected a JSON object {{"texts": [...]}}, got {_json_type(obj)}')
    unknown = [key for key in obj if key not in FIELDS]
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    if "texts" not in obj:
        raise RequestError(422, "missing field 'texts' (an array of strings)")
    probabilities = obj.get("probabilities", True)
    if not isinstance(probabilities, bool):
        raise RequestError(422, f"'probabilities' must be true or false, got {_json_type(probabilities)}")
    return PredictRequest(check_texts(obj["texts"], limits), probabilities)
