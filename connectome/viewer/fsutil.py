"""Small file helpers shared by the exporters: atomic JSON, a cheap fingerprint of a file tree."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from connectome.atomic import atomic_write_bytes, atomic_write_text


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def tree_signature(path: str | Path) -> str:
    """sha1 over (relative name, size, mtime_ns) of every file under ``path`` (or of the file
    itself): changes when any chunk is rewritten, without reading the data."""
    path = Path(path)
    h = hashlib.sha1()
    if path.is_file():
        st = path.stat()
        h.update(f"{path.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            p = os.path.join(root, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            entries.append(f"{os.path.relpath(p, path)}|{st.st_size}|{st.st_mtime_ns}\n")
    for e in sorted(entries):
        h.update(e.encode())
    return h.hexdigest()
