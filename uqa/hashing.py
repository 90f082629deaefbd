"""Hashing file contents: one block size, one loop, for every digest the pipeline records."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BLOCK_BYTES = 1 << 22  # 4 MiB reads: large enough that hashing runs at disk speed, small enough to stay flat


def update_from_file(digest: Any, path: str | Path) -> Any:
    """Feed the bytes of `path` to `digest` (any hashlib/xxhash object); returns it."""
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            digest.update(block)
    return digest


def file_sha256(path: str | Path) -> str:
    return update_from_file(hashlib.sha256(), path).hexdigest()


def files_sha256(paths: Iterable[str | Path], names_relative_to: Path | None = None) -> str:
    """sha256 over several files in the order given; with `names_relative_to`, each file's path
    relative to it goes in before its bytes (a rename changes the digest)."""
    h = hashlib.sha256()
    for path in paths:
        if names_relative_to is not None:
            h.update(str(Path(path).relative_to(names_relative_to)).encode())
        update_from_file(h, path)
    return h.hexdigest()
