"""Names of incoming entries: which ones are refused, and the names entries are stored under.

Anyone may name a file in `incoming/`, so a name is data like any other. A name holding control
characters (a newline, a tab), bytes that are not UTF-8, or characters that reorder the text
around them (bidirectional controls) is refused: it would forge lines in logs and reason files
and show as something it is not on a page. So is a name with `.` or `..` path steps, which a
bucket can hold as a plain object name. Every other name (long, Unicode, spaces, a leading dot)
is fine, and is kept as the sender wrote it in reports, sidecars and reason files.

Stored names (under `accepted/`, `rejected/`, `quarantine/`) start with a digest, so they never
collide and never start with a dot. One that would hold a refused character, or not fit beside
its longest suffix in a file name (255 bytes) or an object name (1024 bytes), is derived: unsafe
characters become `_`, the middle gives way to `…`, the extension stays.
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["MAX_STORED_NAME_BYTES", "claim_name", "name_problem", "stored_name"]

# Leaves room for `.reason.txt` under the 255-byte file-name limit of Linux file systems.
MAX_STORED_NAME_BYTES = 200
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _refused_character(character: str) -> bool:
    # Cc: control characters (newline, tab, DEL, C1); Cs: the surrogates that stand for bytes
    # that are not UTF-8 in a name read from a file system.
    return unicodedata.category(character) in ("Cc", "Cs") or character in _BIDI_CONTROLS


def name_problem(name: str) -> str | None:
    """Why an entry's name is refused, or None when it is fine."""
    refused = sorted({character for character in name if _refused_character(character)})
    if refused:
        shown = ", ".join(repr(character) for character in refused)
        return f"its name holds control characters or bytes that are not UTF-8 ({shown})"
    steps = [step for step in name.split("/") if step in (".", "..")]
    if steps:
        return f"its name holds the path step {steps[0]!r}"
    return None


def stored_name(name: str, digest: str) -> str:
    """`<digest[:16]>-<name>`, folders flattened; derived when that is unsafe or too long."""
    flat = name.replace("/", "__")
    plain = f"{digest[:16]}-{flat}"
    if name_problem(name) is None and len(plain.encode()) <= MAX_STORED_NAME_BYTES:
        return plain
    safe = "".join("_" if _refused_character(character) else character for character in flat)
    return f"{digest[:16]}-{_shortened(safe, MAX_STORED_NAME_BYTES - 17)}"


def claim_name(name: str, tag: str) -> str:
    """The name of the claim on an entry: `<name>-<tag>`, or a digest of the name where the name
    could not stand in a file name as it is."""
    plain = f"{name}-{tag}"
    if name_problem(name) is None and len(plain.encode()) <= MAX_STORED_NAME_BYTES:
        return plain
    encoded = name.encode("utf-8", "surrogateescape")
    return f"name-{hashlib.sha256(encoded).hexdigest()[:32]}-{tag}"


def _shortened(text: str, budget: int) -> str:
    """`text` within `budget` UTF-8 bytes: its start, `…`, and its extension (up to 16 bytes)."""
    if len(text.encode()) <= budget:
        return text
    _, dot, extension = text.rpartition(".")
    tail = f".{extension}" if dot and len(extension.encode()) < 16 else ""
    room = budget - len(tail.encode()) - len("…".encode())
    head = text.encode()[:room].decode(errors="ignore")  # never half a character
    return f"{head}…{tail}"
