"""The one JSON parser for everything a peer sends (REST bodies, stream and AudioHook messages,
Aculab socket events): strict UTF-8, bounded nesting depth, bounded numbers, and one exception
type with a stable code, so hostile input is a clear client error and never a RecursionError,
a digit-limit ValueError or a UnicodeDecodeError escaping as a server error.

Why a depth limit although `json.loads` stops at the interpreter's recursion limit: a document
just under that limit still parses, and whatever walks it next (pydantic, `json.dumps` when it
is stored, the SQLite row, a log line) may recurse deeper than the parser did. No message of
any protocol vbgw speaks is nested more than a few levels."""
from __future__ import annotations

import json
from typing import Any, Iterable

MAX_DEPTH = 32


class JsonInputError(ValueError):
    """Input that is not acceptable JSON. `code` is stable: MALFORMED_JSON or JSON_TOO_DEEP."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def loads(data: str | bytes | bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document (RFC 8259: bytes must be UTF-8). Raises JsonInputError."""
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError("MALFORMED_JSON", f"not valid JSON: not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError("MALFORMED_JSON", f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise JsonInputError("JSON_TOO_DEEP", f"not acceptable JSON: nested deeper than {max_depth} levels") from None
    except ValueError:
        # int() refuses numbers of more than sys.get_int_max_str_digits() digits.
        raise JsonInputError("MALFORMED_JSON", "not valid JSON: a number has too many digits") from None
    if depth_exceeds(value, max_depth):
        raise JsonInputError("JSON_TOO_DEEP", f"not acceptable JSON: nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than max_depth (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False
