"""Hashing file contents: one block size, one loop, for every digest the pipeline records."""

from __future__ import annotations

import hashlib
import os
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


class KnownHashes:
    """sha256 of files, remembered by their stat (device, inode, size, mtime and ctime in ns) in a
    JSON file: a file whose stat has not changed is not read again, as DVC's state database does for
    outputs. ctime changes with every write, also one that puts the old mtime back (cp -p, rsync -a,
    touch -d), which the kernel does not let a user set. `path` None: remember nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.known: dict[str, list] = {}
        self.changed = False
        if path is not None:
            from uqa.ops.jsonfile import read_json

            try:
                self.known = read_json(path)
            except Exception:  # noqa: BLE001 - a damaged cache is only a cache: hash again
                self.known = {}

    def sha256(self, file: str | Path) -> str:
        st = os.stat(file)
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        name = os.path.abspath(file)
        entry = self.known.get(name)
        if isinstance(entry, list) and entry[:-1] == key:
            return entry[-1]
        digest = file_sha256(file)
        self.known[name] = [*key, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.path is not None and self.changed:
            from uqa.ops.atomic import atomic_write_json

            atomic_write_json(self.path, self.known)
            self.changed = False
