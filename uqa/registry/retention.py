"""Retention: what a weekly deployment may delete, so that disk does not grow without bound.

- checkpoints of a finished run: once its model is registered, models/checkpoints (kept for resuming
  an interrupted training, not a DVC output) is only disk; removed after every registration.
- `register.keep_last: N`: the files of registered versions other than the newest N are pruned, unless
  the version holds a stage (prod is never pruned). Its record stays in the index (marked `pruned`),
  its GTO tag and lineage stay in git: `uqa registry show` still answers where it came from.
- the same N for DVC experiments (`uqa run -S`, sweeps' trials): the newest N are kept, older ones are
  removed (`dvc exp remove`), then the DVC cache is collected (`dvc gc --workspace --all-experiments`):
  the data, checkpoints and registry files no kept version, experiment or the workspace uses are gone.

Version pruning runs inside the register stage (it changes the stage's output, registry/); the
experiment pruning and the cache collection need DVC and run in the flow after the stage has been
committed (a stage cannot call DVC under `dvc repro`'s lock).
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.ops.atomic import atomic_write_json
from uqa.ops.git import git_run
from uqa.registry.store import PROD, Registry

log = logging.getLogger(__name__)


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def remove_checkpoints(run_dir: Path) -> int:
    """Remove run_dir/models/checkpoints (its model is registered); the bytes freed."""
    ckpts = Path(run_dir) / layout.CHECKPOINT_DIR
    freed = dir_bytes(ckpts)
    if ckpts.exists():
        shutil.rmtree(ckpts)
        log.info("retention: removed %s (%.1f MB): the run finished and its model is registered", ckpts, freed / 1e6)
    return freed


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in version.lstrip("v").split("."))
    except ValueError:
        return (-1,)


def prune_versions(registry: Registry, keep_last: int | None) -> list[str]:
    """Delete the files of versions older than the newest `keep_last` that hold no stage; their index
    records stay, marked `pruned`. Returns the versions pruned now."""
    if not keep_last:
        return []
    index = registry.index()
    versions = sorted(index["versions"], key=lambda v: _version_key(v["version"]))
    in_stage = {v["version"] for v in versions if v.get("stages")}
    prod = registry.stage_version(PROD)  # GTO's answer in a git project: never prune what it calls prod
    if prod:
        in_stage.add(prod)
    newest = {v["version"] for v in versions[-keep_last:]}
    pruned = []
    for entry in versions:
        version = entry["version"]
        if version in newest or version in in_stage or entry.get("pruned"):
            continue
        vdir = registry.version_dir(version)
        entry["pruned"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        atomic_write_json(registry.index_path, index)  # the record first: a kill mid-delete is still "pruned"
        shutil.rmtree(vdir, ignore_errors=True)
        pruned.append(version)
    if pruned:
        log.info("retention (register.keep_last=%d): pruned the files of %s; their records and GTO tags stay",
                 keep_last, ", ".join(pruned))
    return pruned


def experiments_newest_first(root: Path) -> list[str]:
    """DVC experiment names of the project, newest first (by their commit time)."""
    r = git_run(root, "for-each-ref", "--sort=-committerdate", "--format=%(refname)", "refs/exps")
    names = []
    for ref in r.stdout.split():
        parts = ref.split("/")
        # refs/exps/<baseline sha[:2]>/<sha[2:]>/<name>; refs/exps/exec/... and celery refs are not experiments
        if len(parts) == 5 and parts[2] not in ("exec", "celery", "runs", "temp"):
            names.append(parts[-1])
    return names


def prune_experiments_and_cache(root: Path, keep_last: int | None) -> dict[str, Any]:
    """Remove DVC experiments beyond the newest `keep_last`, then collect the DVC cache (workspace and
    remaining experiments kept). Run it with the workspace held (uqa.workspace.dvc_ops.locked_workspace)."""
    if not keep_last:
        return {}
    from uqa.workspace.dvc_ops import dvc_repo

    root = Path(root)
    old = experiments_newest_first(root)[keep_last:]
    with dvc_repo(root) as repo:
        cache = Path(repo.cache.local.path)
        before = dir_bytes(cache)
        if old:
            repo.experiments.remove(exp_names=old)
            log.info("retention (register.keep_last=%d): removed %d older DVC experiment(s): %s", keep_last,
                     len(old), ", ".join(old))
        repo.gc(workspace=True, all_experiments=True, force=True)
    after = dir_bytes(cache)
    log.info("retention: DVC cache %.1f MB -> %.1f MB", before / 1e6, after / 1e6)
    return {"experiments_removed": old, "cache_bytes_before": before, "cache_bytes_after": after}

