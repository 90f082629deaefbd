"""Running git: the one helper every module that needs git uses, and the remote name we default to."""

from __future__ import annotations

import subprocess
from pathlib import Path

from uqa.errors import UserError
from uqa.redact import strip_url_credentials

GIT_REMOTE = "origin"  # the remote a clone is made from: where experiments and sweep snapshots are pushed


def git(cwd: str | Path, *args: str, env: dict[str, str] | None = None, input: str | None = None,
        strip: bool = True) -> str:
    """`git ARGS` in `cwd`: its stdout (stripped, unless `strip=False`: `-z` and porcelain output keep
    their leading spaces); a UserError (credentials stripped) naming the command, the directory and git's message when it fails."""
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, input=input)
    if r.returncode != 0:
        # a remote URL may carry credentials (user:token@): never in a message that is logged or shown
        raise UserError(strip_url_credentials(f"git {' '.join(args[:3])} failed in {cwd}: {(r.stderr or r.stdout).strip()}"))
    return r.stdout.strip() if strip else r.stdout
