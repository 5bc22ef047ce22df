"""Turning user-given names (symbols, strategy names) into safe single file-name components."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_file_name(name: str, max_length: int = 120) -> str:
    """A file name that cannot leave its directory; a hash suffix keeps altered names distinct."""
    cleaned = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if cleaned == name and len(cleaned) <= max_length:
        return cleaned
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[: max_length - 11]}-{digest}"
