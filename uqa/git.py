"""Running git: the one helper every module that needs git uses, and the remote name we default to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from uqa.errors import UserError
from uqa.redact import strip_url_credentials

GIT_REMOTE = "origin"  # the remote a clone is made from: where experiments and sweep snapshots are pushed


def git_run(cwd: str | Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            text: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`git ARGS` in `cwd`, whatever its exit status (the caller reads returncode): for questions whose
    "no" is an answer (is this a repository? which refs exist?) and for binary output (`text=False`)."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=text, env=env, input=input,
                          timeout=timeout)


def git(cwd: str | Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
        strip: bool = True, timeout: float | None = None) -> str:
    """`git ARGS` in `cwd`: its stdout (stripped, unless `strip=False`: `-z` and porcelain output keep
    their leading spaces); a UserError (credentials stripped) naming the command, the directory and git's
    message when it fails."""
    r = git_run(cwd, *args, env=env, input=input, timeout=timeout)
    if r.returncode != 0:
        # a remote URL may carry credentials (user:token@): never in a message that is logged or shown
        raise UserError(strip_url_credentials(f"git {' '.join(args[:3])} failed in {cwd}: {(r.stderr or r.stdout).strip()}"))
    return r.stdout.strip() if strip else r.stdout
