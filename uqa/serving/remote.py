"""`uqa serve --repo GIT_URL`: a replica that holds no state of its own.

The version comes from the project's git remote and its DVC remote, never from a shared disk:
- a clone of GIT_URL under the cache (`$UQA_SERVE_CACHE`, default `~/.cache/uqa/serve/`), updated
  with `git fetch --tags --force` (GTO's stage tags) and moved to the remote's default branch;
- GTO says which version is in the stage (`uqa-qa#prod#N` tags), as in the project itself;
- DVC downloads that version's directory, `registry/<name>/<version>`, from the DVC remote the
  repository configures, as recorded in the default branch's dvc.lock (`dvc get`: the registry is
  the register stage's output). DVC's `artifacts get` cannot be used here: a GTO version tag points
  at a commit on the `uqa-registry` branch, which holds the model card and record, not dvc.yaml.

Each version is downloaded once, to `<cache>/models/<name>/<version>` (renamed into place when
complete). Several replicas started with the same --repo serve the same prod, and each moves when
it sees the stage tag move (`--poll-seconds`)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from uqa.errors import UserError, first_line
from uqa.git import git
from uqa.redact import strip_url_credentials
from uqa.serving.models import Resolved

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("UQA_SERVE_CACHE") or Path.home() / ".cache" / "uqa" / "serve")


def _git(*args: str, cwd: Path | None = None) -> str:
    return git(cwd or Path.cwd(), *args, timeout=300, strip=False)


class RemoteSource:
    """--model NAME:STAGE (or NAME@vX.Y.Z, or a stage) of the project at `url`."""

    def __init__(self, spec: str, url: str, cache: Path | None = None):
        if "@" in spec:
            self.name, self.version, self.stage = *spec.split("@", 1), None
        elif ":" in spec:
            self.name, self.stage = spec.split(":", 1)
            self.version = None
        else:
            self.name, self.stage, self.version = "uqa-qa", spec, None
        for part in (self.name, self.stage or "", self.version or ""):
            if not re.fullmatch(r"[A-Za-z0-9._-]*", part):
                raise UserError(f"--model {spec!r}: a name, stage or version may hold only letters, digits, . _ -")
        self.spec, self.url = spec, url
        self.cache = Path(cache or cache_root())
        self.clone = self.cache / "repos" / hashlib.sha256(url.encode()).hexdigest()[:16]
        self.root = self.clone  # what /v1/model reports as the registry's project

    @property
    def follows(self) -> bool:
        return self.stage is not None

    def fingerprint(self) -> str:
        """The remote's tags and branches (`git ls-remote`): changes when a stage tag moves."""
        return hashlib.sha256(_git("ls-remote", "--tags", "--heads", self.url).encode()).hexdigest()

    def sync(self) -> None:
        if not (self.clone / ".git").exists():
            self.clone.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.clone.parent, prefix=".clone-"))
            try:
                _git("clone", "--quiet", self.url, str(tmp))
                os.replace(tmp, self.clone)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        _git("fetch", "--quiet", "--force", "--tags", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*",
             cwd=self.clone)
        _git("remote", "set-head", "origin", "--auto", cwd=self.clone)
        _git("reset", "--quiet", "--hard", "origin/HEAD", cwd=self.clone)

    def resolve(self) -> Resolved:
        from uqa.registry import Registry

        self.sync()
        version = self.version
        if self.stage is not None:
            version = Registry(self.clone, self.name).stage_version(self.stage)
            if version is None:
                raise UserError(f"no version of {self.name!r} is in stage {self.stage!r} at {strip_url_credentials(self.url)}")
        elif version not in Registry(self.clone, self.name).gto_versions():
            raise UserError(f"{self.name}@{version} is not a GTO version at {strip_url_credentials(self.url)}")
        return Resolved(self.download(version), version, self.name, self.stage)

    def download(self, version: str) -> Path:
        """registry/<name>/<version> from the DVC remote, once (a finished download is kept)."""
        from dvc.repo import Repo

        dest = self.cache / "models" / self.name / version
        if (dest / "config.json").exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{version}-"))
        rev = _git("rev-parse", "HEAD", cwd=self.clone).strip()
        try:
            Repo.get(str(self.clone), f"registry/{self.name}/{version}", out=str(tmp / "model"), rev=rev)
            if not (tmp / "model" / "config.json").exists():
                raise UserError(f"registry/{self.name}/{version} from {strip_url_credentials(self.url)} has no config.json")
            os.replace(tmp / "model", dest)
        except UserError:
            raise
        except Exception as exc:
            # DVC's message may repeat the remote's URL: the credentials come out of all of it
            raise UserError(strip_url_credentials(
                f"could not download {self.name}@{version} from the DVC remote of {self.url} "
                f"({type(exc).__name__}: {first_line(exc)}): was `dvc push` run and dvc.lock committed and "
                "pushed after registering?")) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s@%s to %s", self.name, version, dest)
        return dest
