"""The promotion gate: a challenger reaches prod only on a like-with-like comparison, never on doubt.

Two F1 numbers are comparable only when they were measured on the same questions in the same way:
the same evaluation set (a sha256 over the validation rows, `eval_set` in metrics/eval.json), the same
mode (SQuAD2 or answerable-only) and the same `evaluate.tune_fraction` (which questions the
no-answer threshold was tuned on and which were reported). When the challenger's evaluation differs
from the one prod's record was scored on (a new weekly validation dump, another mode), prod is
scored again on the challenger's set (prod is a model directory: `rescore` evaluates it) and the
challenger is compared with that score; the promotion reason says so. Nothing here guesses: a
comparison that cannot be made like with like stops registration.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uqa import layout
from uqa.errors import DataError
from uqa.registry.store import PROD, RegistryInconsistent

log = logging.getLogger(__name__)

EVAL_SET_COLUMNS = ("id", "question", "context", "answer", "answer_start", "is_impossible")


def eval_set_fingerprint(examples: Any) -> dict[str, Any]:
    """{sha256, rows} of a validation set (a pandas frame of the filtered examples), whatever the row
    order: what `evaluate` records in metrics/eval.json as `eval_set`."""
    columns = [c for c in EVAL_SET_COLUMNS if c in examples.columns]
    rows = sorted("\x1f".join(str(v) for v in values) for values in zip(*(examples[c].tolist() for c in columns),
                                                                         strict=True))
    h = hashlib.sha256("\x1e".join(columns).encode())
    for row in rows:
        h.update(b"\x1e" + row.encode("utf-8"))
    return {"sha256": h.hexdigest(), "rows": len(rows)}


def evaluation_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """What an F1 was measured on: {eval_set, mode, tune_fraction} (None where the metrics do not say)."""
    tuning = metrics.get("tuning") if isinstance(metrics.get("tuning"), dict) else {}
    eval_set = metrics.get("eval_set") if isinstance(metrics.get("eval_set"), dict) else {}
    fraction = tuning.get("tune_fraction")
    if fraction is None and metrics.get("mode") == "answerable-only":
        fraction = 0.0  # no threshold is tuned in answerable-only mode
    return {"eval_set": eval_set.get("sha256"), "mode": metrics.get("mode"), "tune_fraction": fraction}


def differences(challenger: dict[str, Any], prod: dict[str, Any]) -> list[str]:
    """How the two evaluations differ ([] = like with like); an evaluation that does not say counts as different."""
    a, b = evaluation_of(challenger), evaluation_of(prod)
    out = []
    for key in ("eval_set", "mode", "tune_fraction"):
        if a[key] is None or b[key] is None or a[key] != b[key]:
            shown = [(v[:12] if key == "eval_set" and isinstance(v, str) else v) for v in (b[key], a[key])]
            out.append(f"{key} {shown[0] if shown[0] is not None else 'unrecorded'} -> "
                       f"{shown[1] if shown[1] is not None else 'unrecorded'}")
    return out


def decide(f1: float, min_f1: float, prod: str | None, prod_record: dict[str, Any] | None,
           challenger_metrics: dict[str, Any] | None = None,
           rescore: Callable[[], float] | None = None) -> tuple[bool, str]:
    """(promote, reason): at least `min_f1`, and no worse than prod measured like with like.

    `prod_record` is prod's verified index record (None: no prod yet). When its evaluation differs
    from `challenger_metrics`' the gate calls `rescore()` (prod's F1 on the challenger's evaluation);
    without `rescore` such a comparison is refused (promote False, the reason says why)."""
    if not math.isfinite(f1):
        return False, f"no finite F1 ({f1!r}): not promoted"
    if f1 < min_f1:
        return False, f"F1 {f1:.2f} < register.min_f1 {min_f1:.2f}"
    if prod_record is None:
        return True, f"F1 {f1:.2f} >= min_f1 {min_f1:.2f} (first prod model)"
    prod_f1 = float(prod_record["metrics"]["f1"])
    differ = differences(challenger_metrics or {}, prod_record["metrics"]) if challenger_metrics is not None else []
    how = ""
    if differ:
        if rescore is None:
            return False, (f"F1 {f1:.2f} not comparable with prod {prod} F1 {prod_f1:.2f} (evaluated differently: "
                           f"{'; '.join(differ)}) and prod could not be re-scored: not promoted")
        own = prod_f1
        prod_f1 = float(rescore())
        if not math.isfinite(prod_f1):
            return False, f"prod {prod} re-scored on this evaluation gave no finite F1: not promoted"
        how = (f" re-scored on this run's evaluation (its recorded F1 {own:.2f} was on another: "
               f"{'; '.join(differ)})")
    if f1 < prod_f1:
        return False, f"F1 {f1:.2f} < prod {prod} F1 {prod_f1:.2f}{how}"
    return True, f"F1 {f1:.2f} >= min_f1 {min_f1:.2f} and >= prod {prod} F1 {prod_f1:.2f}{how}"


# -- a version a killed run recorded with its GTO tags pending ------------------------------------------


def verify_pending_version(registry: Any, entry: dict[str, Any]) -> None:
    """The version directory a pending record names holds its files and the very weights it names."""
    from uqa.model.settings import weights_sha256

    version = entry["version"]
    vdir = registry.version_dir(version)
    repair = (f"restore the registry (`dvc pull registry`), or remove {version}'s record from {registry.index_path} "
              f"and its directory, and run again")
    missing = [n for n in ("config.json", "README.md", layout.REGISTRATION_FILE) if not (vdir / n).is_file()]
    if not any(vdir.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise RegistryInconsistent(f"{registry.index_path} records {version} with GTO tags pending, but {vdir} has "
                                   f"no {', '.join(missing)}: {repair}")
    if weights_sha256(vdir) != entry.get("weights_sha256"):
        raise RegistryInconsistent(f"{registry.index_path} records {version} with GTO tags pending, but the weights in "
                                   f"{vdir} are not the ones its record names (weights_sha256): {repair}")


def regate_pending(registry: Any, index: dict[str, Any], entry: dict[str, Any], min_f1: float) -> None:
    """A pending promotion stands only if prod is still what it was decided against (and min_f1 holds);
    else it is decided again, like with like only (no data to re-score prod here), or withdrawn."""
    found = registry.stage_assignment(PROD)
    prod = found[0] if found else None
    gate = entry.get("gate") or {}
    f1 = entry["metrics"].get("f1")
    if "prod" in gate and gate["prod"] == prod and isinstance(f1, (int, float)) and f1 >= min_f1:
        return
    prod_record = registry.record(prod) if prod else None
    if prod and prod_record is None:
        raise RegistryInconsistent(f"{registry.name} {prod} is in prod but {registry.index_path} has no record of it: "
                                   "restore the index (`dvc pull registry`) and run again")
    promote, reason = decide(float(f1) if isinstance(f1, (int, float)) else float("nan"), min_f1, prod, prod_record,
                             entry["metrics"])
    if promote:
        entry["reason"] = f"{reason} (decided again when its tags were completed)"
        entry["gate"] = {"prod": prod, "min_f1": min_f1}
        return
    log.warning("register: %s %s's promotion withdrawn: %s", registry.name, entry["version"], reason)
    entry.update(promoted=False, stages=[], reason=f"promotion withdrawn when its tags were completed: {reason}")
    for other in index["versions"]:  # the index says what GTO says: prod stays where it is
        if other["version"] == prod and PROD not in other.get("stages", []):
            other["stages"] = [*other.get("stages", []), PROD]


def require_metrics_of(metrics: dict[str, Any], digest: str, metrics_file: Path, model_dir: Path) -> None:
    """Metrics vouch only for the weights they name (inference.weights_sha256, written by evaluate):
    metrics of other, or of unnamed, weights stop registration."""
    scored = (metrics.get("inference") or {}).get("weights_sha256")
    if scored == digest:
        return
    said = "does not name the weights it scored (no inference.weights_sha256)" if scored is None else \
        f"scored other weights than {model_dir}"
    raise DataError(f"{metrics_file} {said}: rerun the evaluate stage (dvc repro evaluate)")
