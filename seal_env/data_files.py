"""Reading the data files that the tasks load: JSON whose every failure names the file, and the
check that a text field can be fed to a tokenizer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; newline, tab and carriage return
# are ordinary text. Lone surrogates (json.loads makes one of the escape "\ud800") cannot be encoded,
# so the tokenizer would fail on them at every step.
_UNUSABLE_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def read_json_file(path: Path, what: str) -> Any:
    """The decoded contents of ``path``, a JSON ``what`` file (e.g. "passages").

    Raises FileNotFoundError naming the file when it is missing, and ValueError naming the file when
    it is not UTF-8 JSON that Python can decode (including nesting too deep for the decoder and
    integers longer than Python's digit limit).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid JSON in {what} file: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and the int digit limit
        raise ValueError(f"{path}: invalid JSON in {what} file: {error}") from None


def require_text(value: Any, where: str, *, allow_empty: bool = False) -> str:
    """``value`` if it is usable text, else ValueError starting with ``where`` and saying why.

    Usable text is a ``str`` without lone surrogates or control characters other than newline, tab
    and carriage return, and not blank unless ``allow_empty``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where} must not be empty or whitespace only")
    problem = unusable_character(value)
    if problem:
        raise ValueError(f"{where} contains {problem}")
    return value


def unusable_character(text: str) -> str | None:
    """Where ``text`` holds a lone surrogate or a control character other than newline, tab and
    carriage return (e.g. "a lone surrogate U+D800 at position 3"), or None when it holds neither."""
    bad = _UNUSABLE_CHAR.search(text)
    if bad is None:
        return None
    kind = "lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "control character"
    return f"a {kind} U+{ord(bad.group()):04X} at position {bad.start()}"
