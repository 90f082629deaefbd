"""What a model spec names: a path, a stage (`prod`), `NAME:STAGE`, `NAME@vX.Y.Z` or `vX.Y.Z`,
resolved in a project's registry (one parser for every command and the server)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from uqa.errors import UserError
from uqa.params.schema import DEFAULT_NAME
from uqa.registry.store import VERSION, Registry


@dataclass(frozen=True)
class Spec:
    """What `--model` names besides a path: an artifact (None: the project's register.name) and a stage
    (followed when it moves) or a fixed version."""

    name: str | None
    stage: str | None
    version: str | None


_PART = re.compile(r"[A-Za-z0-9._/-]+")


def parse_spec(spec: str) -> Spec:
    """`prod` (a stage), `NAME:STAGE`, `NAME@vX.Y.Z` or `vX.Y.Z`; UserError for anything else."""
    if "@" in spec:
        name, version = spec.split("@", 1)
        found = Spec(name, None, version)
    elif ":" in spec:
        name, stage = spec.split(":", 1)
        found = Spec(name, stage, None)
    elif VERSION.fullmatch(spec):
        found = Spec(None, None, spec)
    else:
        found = Spec(None, spec, None)
    parts = [p for p in (found.name, found.stage, found.version) if p is not None]
    if not all(_PART.fullmatch(p) for p in parts) or (found.version and not VERSION.fullmatch(found.version)):
        raise UserError(f"model {spec!r}: expected a path, a stage (prod), NAME:STAGE, NAME@vX.Y.Z or vX.Y.Z (a name, "
                        "stage or version holds only letters, digits, . _ / -)")
    return found


def resolve_model(spec: str, root: Path = Path("."), name: str | None = None) -> Path:
    """A model directory from: a path; `prod` (or any stage); `<name>:<stage>`; `<name>@<version>`."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    parsed = parse_spec(spec)
    artifact, stage, version = parsed.name or name, parsed.stage, parsed.version
    if artifact is None:
        artifact = default_artifact(root)
    registry = Registry(root, artifact)
    if stage is not None:
        version = registry.stage_version(stage)
        if version is None:
            raise UserError(
                f"no version of {artifact!r} is in stage {stage!r} in {Path(root).resolve()} "
                f"(run the pipeline, or `uqa demo`, first; `uqa registry` lists versions)"
            )
    assert version is not None
    directory = registry.version_dir(version)
    if not (directory / "config.json").exists() or not any(directory.glob("*.safetensors")):
        raise UserError(
            f"{artifact}@{version} is registered but {directory} is not here: `dvc pull` restores the registry"
        )
    return directory


def default_artifact(root: Path) -> str:
    try:
        from uqa.params.files import load_params
        from uqa.params.schema import PARAMS_FILE

        return load_params(Path(root) / PARAMS_FILE).register.name
    except UserError:
        return DEFAULT_NAME


def version_of(spec: str, root: Path = Path("."), name: str | None = None) -> tuple[Registry, str]:
    """The registry and version that `spec` names: `prod` (or any stage), `NAME:STAGE`, `NAME@vX.Y.Z`, `vX.Y.Z`."""
    parsed = parse_spec(spec)
    artifact, stage, version = parsed.name or name, parsed.stage, parsed.version
    registry = Registry(root, artifact or default_artifact(root))
    if stage is not None:
        version = registry.stage_version(stage)
        if version is None:
            raise UserError(f"no version of {registry.name!r} is in stage {stage!r} in {Path(root).resolve()} "
                            "(`uqa registry` lists versions and stages)")
    if version is None or registry.record(version) is None:
        known = ", ".join(v["version"] for v in registry.versions()) or "none"
        raise UserError(f"{registry.name}@{version} is not in {registry.index_path} (versions: {known})")
    return registry, version
