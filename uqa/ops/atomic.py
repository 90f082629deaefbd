"""Atomic writes: a killed run never leaves an output that a later run mistakes for complete.

Every output is written next to its final path under a temporary name and renamed into place
in one step (rename is atomic on POSIX within a filesystem). The data (a file, or every file and
directory of a tree) is fsynced before the rename and the parent directory after it, so after a
power cut the output is the old one or the new one, complete. A writer killed with SIGKILL leaves
its temporary sibling behind; the next write of the same output removes it (one run at a time
holds a workspace: uqa/workspace/dvc_ops.py). A full disk is one clear error, and the previous output stays."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from uqa.errors import UserError
from uqa.ops.faults import failpoint


class DiskFull(UserError):
    """No space left while writing an output; the previous version of it is untouched."""


def remove_leftovers(final: Path) -> None:
    """Temporary siblings of `final` left by a writer that was killed (`.NAME.*.tmp`, `.NAME.old-*`)."""
    for pattern in (f".{final.name}.*.tmp", f".{final.name}.old-*"):
        for stale in final.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _disk_full_is_clear(final: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC and "No space left on device" not in str(exc):
            raise
        free = shutil.disk_usage(final.parent).free / 2**20
        previous = "the previous version is intact" if final.exists() else "nothing was written"
        raise DiskFull(f"no space left on the device while writing {final} ({free:.1f} MiB free there; "
                       f"{previous}): free some space and run again") from None


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a rename alone can survive a power cut pointing at no data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a new name, a rename) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform where directories cannot be opened: nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root` (and `root`), before `root` is renamed into place."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                fsync_file(path)
        fsync_dir(Path(dirpath))


def _tmp_sibling(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` in one rename."""
    final = Path(path)
    tmp = _tmp_sibling(final, ".tmp")
    try:
        with _disk_full_is_clear(final):
            yield tmp
            failpoint("write.data", at=final.name)  # the last write into it
            fsync_tree(tmp)
        failpoint("write.before_rename", at=final.name)
        replace_dir(tmp, final)
        fsync_dir(final.parent)
        failpoint("write.after_rename", at=final.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, final: Path) -> None:
    """Move the finished directory `src` to `final`, replacing what was there."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(src, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:  # complete or absent: written, fsynced, renamed, directory fsynced
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path for a writer that wants a path (e.g. parquet); renamed on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        with _disk_full_is_clear(final):
            yield Path(tmp)
            failpoint("write.data", at=final.name)
            fsync_file(Path(tmp))
        os.chmod(tmp, 0o644)
        failpoint("write.before_rename", at=final.name)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        failpoint("write.after_rename", at=final.name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
