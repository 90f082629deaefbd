"""Lineage of a registered version: where a model came from, collected when it is registered.

One dict, stored in the version's registration.json, its index record, its model card and (compactly)
its GTO tag annotation:

    code       the workspace's git commit, whether it had uncommitted changes and a hash of them
               (what a run writes is excluded: dvc.lock, .gitignore, the outputs dvc.yaml declares),
               the uqa-pipeline version (and its source commit when it runs from a git checkout)
    params     every params.yaml section as the run used it
    data       the data fingerprint (data/source.json), the DVC hashes dvc.lock records for the
               downloaded, filtered and tokenized data and the model, and a content hash of the
               evaluation set (independent of Arrow's state.json, which changes when the data does not)
    metrics    the scores the promotion gate used
    run        the Prefect flow run (id, name, flow, deployment, UI link), or the sweep's DVC experiment
    promotion  promoted or not, why, and prod (version, F1) it was compared with

`describe` prints it, `diff` says what changed between two versions (code, params, data, metrics).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.ops.git import git_run, status_entries

LINEAGE_FORMAT = 1
# stages whose outputs' DVC hashes (from dvc.lock) identify the data and the model a version was made from
DVC_STAGES = ("download", "filter", "tokenize", "train")
DVC_OUT_ROOTS = ("data/", "models/")  # their data and model outputs (not reports, curves or logs)
# written by every run, not code: dvc.lock, the .gitignore entries DVC adds for outputs, and the outputs
# dvc.yaml declares (a `cache: false` output such as metrics/eval.json is not git-ignored by DVC)
NOT_CODE = {"dvc.lock", ".gitignore"}


def run_outputs(root: Path) -> list[str]:
    """Every path dvc.yaml declares as a stage output, metric or plot (relative to `root`)."""
    from ruamel.yaml import YAML

    try:
        spec = YAML(typ="safe").load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return []
    found = []
    for stage in (spec.get("stages") or {}).values() if isinstance(spec, dict) else []:
        for key in ("outs", "metrics", "plots"):
            for out in (stage or {}).get(key) or [] if isinstance(stage, dict) else []:
                name = next(iter(out)) if isinstance(out, dict) else out
                if isinstance(name, str):
                    found.append(name.strip("/"))
    return found


def _is_code(path: str, outputs: list[str]) -> bool:
    if Path(path).name in NOT_CODE:
        return False
    return not any(path == out or path.startswith(out + "/") for out in outputs)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return git_run(root, *args, text=False)  # bytes: the diff is hashed as git writes it


def code_state(root: Path) -> dict[str, Any]:
    """The git commit of `root`, a dirty flag, and a sha256 of the uncommitted changes (tracked diff
    against HEAD plus the untracked files' names and contents), leaving out what a run writes
    (NOT_CODE, dvc.yaml's outputs). No git repository: commit None."""
    root = Path(root)
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None, "note": "not a git repository"}
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    commit = head.stdout.decode().strip() or None
    branch = _git(root, "symbolic-ref", "--short", "-q", "HEAD").stdout.decode().strip() or None
    # paths in porcelain output are relative to the repository's top level
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".").stdout.decode(
        "utf-8", "replace")
    prefix = _git(root, "rev-parse", "--show-prefix").stdout.decode().strip()  # root inside the repo
    outputs = [prefix + out for out in run_outputs(root)]
    changed, untracked = [], []
    for code, path in status_entries(status):
        if _is_code(path, outputs):
            (untracked if code == "??" else changed).append(path)
    digest = hashlib.sha256()
    if changed:
        top_dir = Path(top.stdout.decode().strip())
        digest.update(_git(top_dir, "diff", "HEAD", "--binary", "--", *sorted(set(changed))).stdout)
    for path in sorted(untracked):
        digest.update(b"\0untracked\0" + path.encode())
        try:
            digest.update(hashlib.sha256((Path(top.stdout.decode().strip()) / path).read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")
    dirty = bool(changed or untracked) or commit is None
    return {"commit": commit, "branch": branch, "dirty": dirty,
            "diff_sha256": digest.hexdigest() if dirty else None,
            "changed_files": sorted(changed + untracked)[:20], "n_changed_files": len(changed) + len(untracked)}


def package_state() -> dict[str, Any]:
    """The uqa-pipeline code that ran: its version and, from a git checkout, its commit and dirty flag."""
    from importlib.metadata import PackageNotFoundError, version

    import uqa

    try:
        found = version("uqa-pipeline")
    except PackageNotFoundError:
        found = None
    source = Path(uqa.__file__).resolve().parent.parent
    state: dict[str, Any] = {"version": found}
    if (source / ".git").exists():
        code = code_state(source)
        state.update(commit=code["commit"], dirty=code["dirty"], diff_sha256=code["diff_sha256"])
    return state


def dvc_hashes(run_dir: Path) -> dict[str, Any]:
    """The md5 dvc.lock records for the data and model outputs ({} entries missing when not run by DVC)."""
    from ruamel.yaml import YAML

    lock_file = Path(run_dir) / "dvc.lock"
    try:
        lock = YAML(typ="safe").load(lock_file.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError) as exc:
        return {"error": f"{lock_file} unreadable: {type(exc).__name__}"}
    found: dict[str, Any] = {}
    stages = lock.get("stages") or {} if isinstance(lock, dict) else {}
    for stage in DVC_STAGES:
        for out in (stages.get(stage) or {}).get("outs") or []:
            if isinstance(out, dict) and str(out.get("path", "")).startswith(DVC_OUT_ROOTS):
                found[out["path"]] = out.get("md5")
    return found


def data_lineage(run_dir: Path, eval_set: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data a version was made from; `eval_set` is what evaluate recorded of its questions
    (metrics/eval.json: uqa.registry.gate.eval_set_fingerprint, the hash the promotion gate compares)."""
    run_dir = Path(run_dir)
    fingerprint_file = run_dir / layout.SOURCE_FINGERPRINT
    try:
        raw = fingerprint_file.read_bytes()
        fingerprint = json.loads(raw)
        fingerprint_sha = hashlib.sha256(raw).hexdigest()
    except (OSError, ValueError):
        fingerprint, fingerprint_sha = None, None
    return {"fingerprint": fingerprint, "fingerprint_sha256": fingerprint_sha, "dvc": dvc_hashes(run_dir),
            "eval_set_sha256": (eval_set or {}).get("sha256"), "eval_set_rows": (eval_set or {}).get("rows")}


def prefect_run() -> dict[str, Any] | None:
    """The Prefect flow run this code runs in (None outside one, e.g. under `dvc repro`)."""
    try:
        from prefect.runtime import deployment, flow_run
    except ImportError:
        return None
    run_id = flow_run.get_id()
    if not run_id:
        return None
    return {"flow_run_id": str(run_id), "flow_run_name": flow_run.get_name(), "flow": flow_run.get_flow_name(),
            "deployment": deployment.get_name(), "deployment_id": deployment.get_id(), "ui_url": run_ui_url(run_id),
            "api_url": _api_url()}


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def run_ui_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (None when the run is on a temporary server, gone with it)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value() if _api_url() else None
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def collect(root: Path, run_dir: Path, params: Any, metrics: dict[str, Any], promotion: dict[str, Any],
            experiment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything above for a version registered from `run_dir` in the project `root`.
    `experiment`: the sweep's winning DVC experiment ({name, rev, flow_run_id, flow_run_name})."""
    run = prefect_run()
    if experiment:
        run = dict(run or {}, experiment={k: experiment.get(k) for k in ("name", "rev", "flow_run_id", "flow_run_name")})
    return {
        "format": LINEAGE_FORMAT,
        "code": code_state(Path(root)),
        "package": package_state(),
        "params": params.to_dict(),
        "data": data_lineage(Path(run_dir), metrics.get("eval_set") if isinstance(metrics.get("eval_set"), dict) else None),
        "metrics": metrics,
        "run": run,
        "promotion": promotion,
    }


def annotation(record: dict[str, Any]) -> dict[str, Any]:
    """What the GTO tag carries: the headline of the lineage (the full record is in registration.json)."""
    lin = record.get("lineage") or {}
    code, data, run = lin.get("code") or {}, lin.get("data") or {}, lin.get("run") or {}
    return {"metrics": record.get("metrics"), "weights_sha256": record.get("weights_sha256"),
            "commit": code.get("commit"), "dirty": code.get("dirty"), "diff_sha256": code.get("diff_sha256"),
            "data_fingerprint_sha256": data.get("fingerprint_sha256"), "eval_set_sha256": data.get("eval_set_sha256"),
            "dvc": data.get("dvc"), "flow_run_id": run.get("flow_run_id"), "flow_run_name": run.get("flow_run_name"),
            "deployment": run.get("deployment"), "experiment": (run.get("experiment") or {}).get("name"),
            "promoted": record.get("promoted"), "reason": record.get("reason")}


# -- reading ---------------------------------------------------------------------------------------

def describe(name: str, record: dict[str, Any], stages: list[str]) -> list[str]:
    """`uqa registry show`: the version's lineage for a person."""
    lin = record.get("lineage") or {}
    code, pkg, data = lin.get("code") or {}, lin.get("package") or {}, lin.get("data") or {}
    run, promo, m = lin.get("run") or {}, lin.get("promotion") or {}, record.get("metrics") or {}
    lines = [f"{name}@{record['version']}" + (f"  (stages: {', '.join(stages)})" if stages else ""),
             f"  promoted: {'yes' if record.get('promoted') else 'no'} ({record.get('reason')})"]
    if promo.get("prod_before"):
        lines.append(f"  compared with: prod {promo['prod_before']} F1 {promo.get('prod_f1')}")
    lines.append("  metrics: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    if record.get("pruned"):
        lines.append(f"  files: pruned {record['pruned']} (register.keep_last); the record stays")
    if not lin:
        lines.append("  lineage: not recorded (registered before uqa-pipeline recorded lineage)")
        return lines
    dirty = "" if not code.get("dirty") else f" + uncommitted changes (sha256 {code.get('diff_sha256')})"
    lines.append(f"  code: commit {code.get('commit') or '(none)'}{dirty}; uqa-pipeline {pkg.get('version')}"
                 + (f" at {pkg['commit']}" + (" (dirty)" if pkg.get("dirty") else "") if pkg.get("commit") else ""))
    lines.append(f"  data: fingerprint sha256 {data.get('fingerprint_sha256')}; evaluation set sha256 "
                 f"{data.get('eval_set_sha256')}")
    for path, md5 in (data.get("dvc") or {}).items():
        lines.append(f"    dvc {path}: {md5}")
    lines.append(f"  weights sha256: {record.get('weights_sha256')}")
    if run.get("flow_run_id"):
        lines.append(f"  flow run: {run.get('flow_run_name')} ({run['flow_run_id']}) of flow {run.get('flow')}, "
                     f"deployment {run.get('deployment') or '(none)'}")
        if run.get("ui_url"):
            lines.append(f"    {run['ui_url']}")
    if run.get("experiment"):
        exp = run["experiment"]
        lines.append(f"  DVC experiment: {exp.get('name')} (rev {exp.get('rev')}, trial flow run "
                     f"{exp.get('flow_run_name')} {exp.get('flow_run_id')})")
    if not run:
        lines.append("  run: outside Prefect (dvc repro)")
    return lines


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


DIFF_SECTIONS = {  # what `uqa registry diff` compares, and where each lives in a record
    "code": lambda r: {k: v for k, v in ((r.get("lineage") or {}).get("code") or {}).items()
                       if k in ("commit", "dirty", "diff_sha256")} | {
        "uqa-pipeline": ((r.get("lineage") or {}).get("package") or {}).get("version")},
    "params": lambda r: (r.get("lineage") or {}).get("params"),
    "data": lambda r: (r.get("lineage") or {}).get("data"),
    "metrics": lambda r: r.get("metrics"),
    "weights": lambda r: {"sha256": r.get("weights_sha256")},
    "run": lambda r: {k: v for k, v in ((r.get("lineage") or {}).get("run") or {}).items()
                      if k in ("flow_run_name", "flow_run_id", "deployment", "experiment")},
}


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[tuple[str, Any, Any]]]:
    """Per section, the (key, value in a, value in b) that differ."""
    changes: dict[str, list[tuple[str, Any, Any]]] = {}
    for section, pick in DIFF_SECTIONS.items():
        fa, fb = _flatten(pick(a) or {}), _flatten(pick(b) or {})
        rows = [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
        if rows:
            changes[section] = rows
    return changes
