"""Which model `uqa serve` answers with, and following the registry when its stage moves.

`ModelSource` turns `--model` (PATH, a stage such as prod, NAME:STAGE, NAME@vX.Y.Z) into the
version it names right now. `ModelHolder` keeps the model being served: a watcher thread notices
when the stage moves (the GTO tags, or the registry index outside git), loads the new version in
the background and swaps the reference in one assignment. A batch takes the reference once, so
every answer of a batch comes from one version and names it; requests never wait for a load."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import UserError, first_line
from uqa.ops.git import git_run
from uqa.ops.redact import strip_url_credentials

log = logging.getLogger(__name__)


class ModelRefused(UserError):
    """A version the gate did not approve for this stage, or whose files are not the ones it approved:
    never loaded; the holder keeps the current version and does not try it again until the source moves."""

    def __init__(self, version: str, message: str):
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class Resolved:
    path: Path
    version: str
    name: str | None = None
    stage: str | None = None


@dataclass
class ServedModel:
    resolved: Resolved
    predictor: Any  # uqa.model.predict.Predictor (its .model possibly an ONNX Runtime session)
    backend: str
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    notes: list[str] = field(default_factory=list)  # e.g. a backend's agreement with torch

    @property
    def version(self) -> str:
        return self.resolved.version


class ModelSource:
    """`--model` in the registry of `root` (a project)."""

    def __init__(self, spec: str, root: Path):
        self.spec, self.root = spec, Path(root)
        path = Path(spec).expanduser()
        self.fixed_path = path if path.exists() else None
        self.name: str | None = None
        self.stage: str | None = None
        self.version: str | None = None
        if self.fixed_path is None:
            from uqa.registry.lookup import default_artifact, parse_spec

            parsed = parse_spec(spec)
            self.name, self.stage, self.version = parsed.name or default_artifact(self.root), parsed.stage, parsed.version

    @property
    def follows(self) -> bool:
        """Whether the served version can change (a stage, not a fixed version or path)."""
        return self.stage is not None

    def resolve(self) -> Resolved:
        from uqa.registry.lookup import resolve_model
        from uqa.registry.store import Registry

        if self.fixed_path is not None:
            return Resolved(self.fixed_path, _version_of_dir(self.fixed_path))
        if self.stage is not None:
            version = Registry(self.root, self.name).stage_version(self.stage)
            if version is None:
                raise UserError(f"no version of {self.name!r} is in stage {self.stage!r} in {self.root.resolve()} "
                                "(run the pipeline, or `uqa demo`, first; `uqa registry` lists versions)")
        else:
            version = self.version
        path = resolve_model(f"{self.name}@{version}", self.root)
        return Resolved(path, version, self.name, self.stage)

    def fingerprint(self) -> str:
        """Changes whenever the stage may have moved: the artifact's git tags and the index file."""
        if not self.follows:
            return ""
        from uqa.registry.store import Registry

        registry = Registry(self.root, self.name)
        h = hashlib.sha256()
        r = git_run(self.root, "for-each-ref", "--format=%(refname) %(objectname)",
                    f"refs/tags/{self.name}@*", f"refs/tags/{self.name}#*")
        h.update(r.stdout.encode())
        try:
            st = registry.index_path.stat()
            h.update(f"{st.st_mtime_ns} {st.st_size}".encode())
        except FileNotFoundError:
            pass
        return h.hexdigest()


def registration_of(path: Path) -> dict[str, Any]:
    """A model directory's registration.json (version, metrics, promotion, lineage), or {} when it has
    none or an unreadable one: any model directory can be served, a registered one says more."""
    import json

    try:
        data = json.loads((Path(path) / layout.REGISTRATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _version_of_dir(path: Path) -> str:
    """A model directory's registry version (its registration.json), else its directory name."""
    version = registration_of(path).get("version")
    return version if isinstance(version, str) and version else path.resolve().name


class ModelHolder:
    """The model being served, swapped atomically when the source's stage moves."""

    def __init__(self, source: ModelSource, load: Callable[[Resolved], ServedModel], poll_seconds: float = 5.0):
        self.source, self.load, self.poll_seconds = source, load, poll_seconds
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self.refused: dict[str, Any] | None = None  # the version not served, why, and the source state it had
        self.follow_errors = 0  # checks that failed or refused a version (uqa_follow_errors_total)
        self.swaps: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fingerprint: str | None = None

    def load_initial(self) -> ServedModel:
        self._fingerprint = self.source.fingerprint()
        self.current = self.load(self.source.resolve())
        return self.current

    def check_once(self) -> bool:
        """Load and swap in the stage's version if it moved; True when a swap happened. A version refused
        (ModelRefused) is not tried again until the source moves again: never downloaded again and again."""
        fingerprint = self.source.fingerprint()
        if fingerprint == self._fingerprint or (self.refused and self.refused["fingerprint"] == fingerprint):
            return False
        try:
            resolved = self.source.resolve()
        except ModelRefused as exc:
            self.refused = {"version": exc.version, "reason": str(exc), "at": time.time(), "fingerprint": fingerprint}
            raise
        self.refused = None
        current = self.current
        if current is not None and resolved.version == current.version:
            self._fingerprint = fingerprint
            return False
        log.info("%s moved to %s %s: loading it in the background", self.source.spec, resolved.name,
                 resolved.version)
        new = self.load(resolved)
        self.current = new  # one reference assignment: a batch sees the old model or the new one
        self._fingerprint = fingerprint
        self.swaps.append({"from": current.version if current else None, "to": new.version, "at": time.time()})
        log.info("now serving %s %s (was %s)", resolved.name, new.version, current.version if current else None)
        return True

    def start_watching(self) -> None:
        if not self.source.follows or self.poll_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._watch, name="uqa-follow-prod", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
                self.last_error = self.refused["reason"] if self.refused else None
            except Exception as exc:  # keep serving the current version; say why the new one is not
                self.follow_errors += 1
                # one line, no credentials: a git or DVC message may carry the remote's URL
                message = strip_url_credentials(str(exc) if isinstance(exc, UserError)
                                                else f"{type(exc).__name__}: {first_line(exc)}")
                if message != self.last_error:  # said once, not at every poll
                    log.error("could not follow %s (still serving %s): %s", self.source.spec,
                              self.current.version if self.current else None, message)
                self.last_error = message
