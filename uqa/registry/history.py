"""The registry's history: every version with its date, F1 and promotion, and which version was prod when.

Read from what the registry already records: the index (uqa/registry/store.py: metrics, promotion,
pruning) and, in a git project, GTO's events (`gto.api.history`: each version's registration tag and
each `NAME#prod#N` assignment, with their dates). Outside git the dates are the index's own
`registered_at` (recorded since this file exists; older versions have none) and prod's periods follow
from the promotions. `uqa serve` answers it at GET /v1/versions; `uqa registry history` prints it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from uqa.ops.git import git_run
from uqa.registry.store import PROD, REGISTRY_BRANCH, Registry, remote_branch_ref

log = logging.getLogger(__name__)

MAX_VERSIONS = 1000  # the newest N: a page and a JSON answer stay small after years of weekly runs


def utc_text(moment: datetime | None) -> str | None:
    """2026-12-07T19:01:52Z: one format for the page, the CLI and the JSON."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _gto_events(registry: Registry) -> list[dict[str, Any]]:
    """GTO's registration/assignment/unassignment/deprecation events of the artifact, oldest first."""
    if not registry.uses_git or not registry.git_tags():
        return []
    import gto.api

    return registry._gto("history", lambda: gto.api.history(str(registry.root), registry.name, ascending=True))


def _tag_number(ref: Any) -> int:
    tail = str(ref or "").rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _prod_periods(events: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{version, from, until}] of the prod stage, oldest first (until None: prod now). From GTO's
    assignments in git; outside git, each promotion starts a period at its registration."""
    periods: list[dict[str, Any]] = []

    def close(at: str | None) -> None:
        if periods and periods[-1]["until"] is None:
            periods[-1]["until"] = at

    stage_events = [e for e in events if e.get("stage") == PROD and e.get("event") in ("assignment", "unassignment")]
    # GTO's dates are whole seconds: within one, the tag's own counter (NAME#prod#N) says the order
    stage_events.sort(key=lambda e: (e.get("timestamp"), _tag_number(e.get("ref"))))
    if events:
        for e in stage_events:
            at = utc_text(e.get("timestamp"))
            if e["event"] == "assignment":
                close(at)
                periods.append({"version": e.get("version"), "from": at, "until": None})
            elif periods and periods[-1]["version"] == e.get("version"):
                close(at)
        return periods
    for r in records:
        if r.get("promoted") is True:
            close(r.get("registered_at"))
            periods.append({"version": r["version"], "from": r.get("registered_at"), "until": None})
    current = [r["version"] for r in records if PROD in (r.get("stages") or [])]
    if periods and periods[-1]["version"] not in current:
        close(None)  # prod moved without a record of when (outside git: an edited index)
        periods[-1]["until"] = periods[-1]["until"] or "unknown"
    return periods


def _entry(record: dict[str, Any], registered_at: str | None, prod: str | None,
           periods: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    eval_set = metrics.get("eval_set") or {}
    version = record.get("version")
    return {
        "version": version,
        "registered_at": registered_at or record.get("registered_at"),
        "f1": metrics.get("f1"),
        "exact_match": metrics.get("exact_match"),
        "n_questions": metrics.get("n_questions"),
        "mode": metrics.get("mode"),
        # which questions the F1 was measured on: F1s of different sets are not comparable
        "eval_set": (eval_set.get("sha256") or "")[:12] or None,
        "promoted": record.get("promoted") is True,
        "reason": record.get("reason"),
        "prod": version == prod,
        "prod_periods": [{"from": p["from"], "until": p["until"]} for p in periods if p["version"] == version],
        "pruned": record.get("pruned") or None,
    }


def registry_history(root: Path, name: str, limit: int = MAX_VERSIONS) -> dict[str, Any]:
    """{name, prod, dates_from, versions: [oldest first], prod_history, truncated}. Raises
    RegistryInconsistent when the index or the tags cannot be read (never an empty history instead)."""
    registry = Registry(Path(root), name)
    records = registry.versions()
    events = _gto_events(registry)
    registered = {e.get("version"): utc_text(e.get("timestamp")) for e in events if e.get("event") == "registration"}
    prod = registry.stage_version(PROD)
    periods = _prod_periods(events, records)
    versions = [_entry(r, registered.get(r.get("version")), prod, periods) for r in records]
    return {
        "name": name,
        "prod": prod,
        "dates_from": "GTO tags (git)" if events else "the registry index",
        "versions": versions[-limit:],
        "truncated": len(versions) > limit,
        "prod_history": periods[-limit:],
    }


@dataclass
class HistoryCache:
    """The last history read, kept while the registry is unchanged (its index file, the registry branch
    and the artifact's tags): a page that polls must not make every request parse GTO's tags again."""

    key: str | None = None
    value: dict[str, Any] | None = None

    def get(self, root: Path, name: str) -> dict[str, Any]:
        key = registry_fingerprint(Path(root), name)
        if self.value is None or key != self.key:
            self.value, self.key = registry_history(root, name), key
        return self.value


def registry_fingerprint(root: Path, name: str) -> str:
    registry = Registry(root, name)
    parts = []
    try:
        stat = registry.index_path.stat()
        parts.append(f"{stat.st_mtime_ns}:{stat.st_size}")
    except OSError:
        parts.append("no index file")
    if registry.uses_git:
        refs = git_run(root, "for-each-ref", "--format=%(objectname) %(refname)", f"refs/tags/{name}@*",
                       f"refs/tags/{name}#*", REGISTRY_BRANCH,
                       remote_branch_ref())
        parts.append(refs.stdout if refs.returncode == 0 else f"git failed: {refs.stderr}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def history_lines(history: dict[str, Any]) -> list[str]:
    """`uqa registry history`: one line per version, then prod's periods."""
    lines = [f"{history['name']} (dates from {history['dates_from']}; prod = {history['prod']})"]
    for v in history["versions"]:
        f1 = "  n/a " if v["f1"] is None else f"{v['f1']:6.2f}"
        mark = (" <- prod" if v["prod"] else "") + (" (files pruned)" if v["pruned"] else "")
        lines.append(f"  {v['version']}  {v['registered_at'] or 'date unknown':20}  F1 {f1}  "
                     f"{'promoted' if v['promoted'] else 'not promoted'}{mark}")
    if history["prod_history"]:
        lines.append("prod:")
        for p in history["prod_history"]:
            lines.append(f"  {p['version']}  from {p['from'] or 'unknown'}  until {p['until'] or 'now'}")
    return lines
