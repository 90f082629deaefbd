"""`uqa serve --repo GIT_URL`: a replica that holds no state of its own.

The version comes from the project's git remote and its DVC remote, never from a shared disk:
- a clone of GIT_URL under the cache (`$UQA_SERVE_CACHE`, default `~/.cache/uqa/serve/`), updated
  with `git fetch --tags --force` (GTO's stage tags) and every branch, moved to the default branch;
- GTO says which version is in the stage (`uqa-qa#prod#N` tags), as in the project itself;
- the registry branch that `uqa run --push` publishes (uqa/registry/publish.py) names the registry directory on
  the DVC remote (`registry.dvc`) and holds the index: DVC downloads `registry/<name>/<version>` at that
  commit (`dvc get`). A project that never published the branch is read at the default branch's
  dvc.lock instead (the register stage's output). DVC's `artifacts get` cannot be used: a GTO version
  tag points at a commit on the `uqa-registry` branch, which holds no dvc.yaml.

Only what the gate approved is served: before a version is loaded (or swapped in), the index must
record it as promoted when it is served as prod, and the downloaded weights' sha256 must equal the
`weights_sha256` the gate registered (`ModelRefused` otherwise: the old version keeps serving, and a
refused version is not downloaded again until the remote moves).

Each version is downloaded once, to `<cache>/models/<name>/<version>` (renamed into place when
complete and verified). Several replicas started with the same --repo serve the same prod, and each
moves when it sees the stage tag move (`--poll-seconds`)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from uqa.errors import UserError, first_line
from uqa.ops.git import GIT_REMOTE, git, git_run
from uqa.ops.redact import strip_url_credentials
from uqa.serving.models import ModelRefused, Resolved

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("UQA_SERVE_CACHE") or Path.home() / ".cache" / "uqa" / "serve")


def _git(*args: str, cwd: Path | None = None) -> str:
    return git(cwd or Path.cwd(), *args, timeout=300, strip=False)


class RemoteSource:
    """--model NAME:STAGE (or NAME@vX.Y.Z, or a stage) of the project at `url`."""

    def __init__(self, spec: str, url: str, cache: Path | None = None):
        from uqa.params.schema import DEFAULT_NAME
        from uqa.registry.lookup import parse_spec

        parsed = parse_spec(spec)  # no project here to read register.name from: the default name
        self.name, self.stage, self.version = parsed.name or DEFAULT_NAME, parsed.stage, parsed.version
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
        # the remote's default branch: only a project that never published the registry branch needs it
        # (its dvc.lock). A bare repository made with `git init --bare` and pushed another branch has a
        # HEAD naming no branch; the registry branch and the tags serve without it.
        if git_run(self.clone, "remote", "set-head", "origin", "--auto", timeout=300).returncode == 0:
            _git("reset", "--quiet", "--hard", "origin/HEAD", cwd=self.clone)
        else:
            git_run(self.clone, "remote", "set-head", "origin", "--delete", timeout=300)

    def resolve(self) -> Resolved:
        from uqa.registry.store import Registry

        self.sync()
        version = self.version
        if self.stage is not None:
            version = Registry(self.clone, self.name).stage_version(self.stage)
            if version is None:
                raise UserError(f"no version of {self.name!r} is in stage {self.stage!r} at {strip_url_credentials(self.url)}")
        elif version not in Registry(self.clone, self.name).gto_versions():
            raise UserError(f"{self.name}@{version} is not a GTO version at {strip_url_credentials(self.url)}")
        rev = self.registry_rev()
        record = self.approved_record(version, rev)
        return Resolved(self.download(version, rev, record["weights_sha256"]), version, self.name, self.stage)

    def registry_rev(self) -> str:
        """The commit whose DVC records name the registry directory: the published registry branch's tip
        (`uqa run --push`), else the default branch (a project that committed its dvc.lock)."""
        from uqa.registry.publish import POINTER_FILE
        from uqa.registry.store import REGISTRY_BRANCH, remote_branch_ref

        branch = remote_branch_ref(GIT_REMOTE)
        if git_run(self.clone, "cat-file", "-e", f"{branch}:{POINTER_FILE}").returncode == 0:
            return _git("rev-parse", branch, cwd=self.clone).strip()
        if git_run(self.clone, "rev-parse", "--verify", "-q", "origin/HEAD").returncode != 0:
            name = REGISTRY_BRANCH.removeprefix("refs/heads/")
            raise UserError(f"{strip_url_credentials(self.url)} has no {name} branch (no `uqa run --push` "
                            "published to it) and its HEAD names no branch to read dvc.lock from: publish with "
                            "`uqa run --push`, or point its HEAD at your branch (in a bare repository: "
                            "git symbolic-ref HEAD refs/heads/main)")
        return _git("rev-parse", "origin/HEAD", cwd=self.clone).strip()

    def approved_record(self, version: str, rev: str) -> dict:
        """The version's index record, if the gate approved serving it here: promoted, when served as prod,
        and naming its weights (`ModelRefused` otherwise)."""
        from uqa.registry.store import PROD

        index = self._index(rev)
        record = next((v for v in index.get("versions", []) if v.get("version") == version), None)
        where = f"{self.name}@{version} at {strip_url_credentials(self.url)}"
        if record is None:
            raise ModelRefused(version, f"{where}: the registry index has no record of it (GTO tags without a "
                                        "published registration): not served")
        if self.stage == PROD and not (record.get("promoted") is True and PROD in (record.get("stages") or [])):
            raise ModelRefused(version, f"{where} is in {PROD} by its GTO tags, but the registry index does not record "
                                        f"the gate promoting it ({record.get('reason')!r}): not served")
        if not isinstance(record.get("weights_sha256"), str):
            raise ModelRefused(version, f"{where}: its index record names no weights_sha256: not served")
        if record.get("pruned"):
            raise ModelRefused(version, f"{where}: its files were pruned (register.keep_last)")
        return record

    def _index(self, rev: str) -> dict:
        """The registry index the registry branch publishes, else registry/<name>/index.json at `rev`."""
        import json

        from uqa.registry.store import remote_branch_ref

        r = git_run(self.clone, "cat-file", "blob", f"{remote_branch_ref(GIT_REMOTE)}:{self.name}/index.json")
        if r.returncode != 0:
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                self._dvc_get(f"registry/{self.name}/index.json", Path(tmp) / "index.json", rev, "its registry index")
                text = (Path(tmp) / "index.json").read_text(encoding="utf-8")
        else:
            text = r.stdout
        try:
            index = json.loads(text)
        except ValueError:
            raise UserError(f"the registry index of {self.name} at {strip_url_credentials(self.url)} is not JSON") from None
        return index if isinstance(index, dict) else {}

    def _dvc_get(self, path: str, out: Path, rev: str, what: str) -> None:
        from dvc.repo import Repo

        try:
            Repo.get(str(self.clone), path, out=str(out), rev=rev)
        except Exception as exc:
            # DVC's message may repeat the remote's URL: the credentials come out of all of it
            raise UserError(strip_url_credentials(
                f"could not download {what} ({path}) from the DVC remote of {self.url} "
                f"({type(exc).__name__}: {first_line(exc)}): was it published (`uqa run --push`)?")) from None

    def download(self, version: str, rev: str, weights_sha256: str) -> Path:
        """registry/<name>/<version> from the DVC remote, once, kept only when its weights are the ones the
        gate registered (a finished, verified download is kept)."""
        from uqa.model.settings import weights_sha256 as sha_of

        dest = self.cache / "models" / self.name / version
        if (dest / "config.json").exists() and sha_of(dest) == weights_sha256:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{version}-"))
        try:
            self._dvc_get(f"registry/{self.name}/{version}", tmp / "model", rev, f"{self.name}@{version}")
            if not (tmp / "model" / "config.json").exists():
                raise UserError(f"registry/{self.name}/{version} from {strip_url_credentials(self.url)} has no config.json")
            got = sha_of(tmp / "model")
            if got != weights_sha256:
                raise ModelRefused(version, f"{self.name}@{version} from {strip_url_credentials(self.url)}: the downloaded "
                                            f"weights' sha256 {got[:12]} is not the {weights_sha256[:12]} the gate "
                                            "registered: not served")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp / "model", dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s@%s to %s (weights verified)", self.name, version, dest)
        return dest
