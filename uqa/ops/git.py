"""Running git: the one helper every module that needs git uses, and the remote name we default to.

Every failure of a git command, a timeout included, is one UserError line with URL credentials
stripped: git's own messages and Python's TimeoutExpired both repeat the command, and a remote's URL
in it may carry `user:token@`, which must never reach a log, an artifact or `/v1/model`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from uqa.errors import UserError, first_line
from uqa.ops.redact import strip_url_credentials

GIT_REMOTE = "origin"  # the remote a clone is made from: where experiments and sweep snapshots are pushed


class GitError(UserError):
    """A git command failed or timed out (the message is one line, credentials stripped)."""


def _shown(args: tuple[str, ...]) -> str:
    return strip_url_credentials(" ".join(args[:3]))


def git_run(cwd: str | Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            text: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`git ARGS` in `cwd`, whatever its exit status (the caller reads returncode): for questions whose
    "no" is an answer (is this a repository? which refs exist?) and for binary output (`text=False`).
    A timeout is a GitError (one line, no credentials), never Python's TimeoutExpired."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text, env=env, input=input,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {_shown(args)} timed out after {timeout:g} s in {cwd}") from None
    except FileNotFoundError:
        raise GitError(f"git is not installed (needed for git {_shown(args)} in {cwd})") from None


def git(cwd: str | Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
        strip: bool = True, timeout: float | None = None) -> str:
    """`git ARGS` in `cwd`: its stdout (stripped, unless `strip=False`: `-z` and porcelain output keep
    their leading spaces); a GitError (one line, credentials stripped) naming the command, the directory
    and git's message when it fails."""
    r = git_run(cwd, *args, env=env, input=input, timeout=timeout)
    if r.returncode != 0:
        said = " ".join((r.stderr or r.stdout or "").split())  # git's lines joined: one line
        raise GitError(strip_url_credentials(f"git {_shown(args)} failed in {cwd}: {first_line(said, 500)}"))
    return r.stdout.strip() if strip else r.stdout


def status_entries(porcelain_z: str) -> list[tuple[str, str]]:
    """(XY status code, path) of each entry of `git status --porcelain=v1 -z` output, paths relative to
    the repository's top level. A rename or copy is one entry under its new path: its source path
    follows it as a bare NUL-separated token, which is skipped."""
    entries = []
    tokens = porcelain_z.split("\0")
    i = 0
    while i < len(tokens):
        item = tokens[i]
        i += 1
        if len(item) < 4:
            continue
        code, path = item[:2], item[3:]
        if code[0] in "RC":
            i += 1
        entries.append((code, path))
    return entries
