"""The registry's history (uqa/registry/history.py): what GET /v1/versions and `uqa registry history`
answer. With git: the dates and prod's periods come from GTO's real tags (written by the registry's own
git_register/git_promote); without: from the index. An unreadable registry is an error, never an empty
history; the cache serves the same answer until the registry changes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from uqa.registry.history import HistoryCache, history_lines, registry_history
from uqa.registry.store import PROD, Registry, RegistryInconsistent

NAME = "uqa-qa"


def _record(version: str, f1: float, promoted: bool, stages: list[str], **extra) -> dict:
    return {"version": version, "metrics": {"f1": f1, "exact_match": f1 - 5, "n_questions": 230,
                                            "mode": "answerable-only", "eval_set": {"sha256": "ab" * 32, "rows": 230}},
            "promoted": promoted, "reason": "gate says so", "stages": stages, **extra}


def _write_index(root: Path, records: list[dict]) -> Path:
    index = root / "registry" / NAME / "index.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"name": NAME, "versions": records}))
    return index


def test_without_git_the_index_gives_dates_and_prod_periods(tmp_path):
    _write_index(tmp_path, [
        _record("v0.0.1", 40.0, True, [], registered_at="2026-11-23T02:00:00Z"),
        _record("v0.0.2", 45.5, True, [PROD], registered_at="2026-11-30T02:00:00Z"),
        _record("v0.0.3", 44.0, False, [], registered_at="2026-12-07T02:00:00Z", pruned="2026-12-07 03:00:00 UTC"),
        _record("v0.0.4", 47.0, False, []),  # registered before the index recorded dates
    ])
    h = registry_history(tmp_path, NAME)
    assert h["prod"] == "v0.0.2" and h["dates_from"] == "the registry index" and not h["truncated"]
    assert [(v["version"], v["registered_at"], v["promoted"], v["prod"]) for v in h["versions"]] == [
        ("v0.0.1", "2026-11-23T02:00:00Z", True, False), ("v0.0.2", "2026-11-30T02:00:00Z", True, True),
        ("v0.0.3", "2026-12-07T02:00:00Z", False, False), ("v0.0.4", None, False, False)]
    assert h["prod_history"] == [
        {"version": "v0.0.1", "from": "2026-11-23T02:00:00Z", "until": "2026-11-30T02:00:00Z"},
        {"version": "v0.0.2", "from": "2026-11-30T02:00:00Z", "until": None}]
    assert h["versions"][2]["pruned"] and h["versions"][1]["eval_set"] == "ab" * 6
    assert h["versions"][0]["prod_periods"] == [{"from": "2026-11-23T02:00:00Z", "until": "2026-11-30T02:00:00Z"}]
    text = "\n".join(history_lines(h))
    assert "v0.0.2  2026-11-30T02:00:00Z" in text and "<- prod" in text and "date unknown" in text
    assert registry_history(tmp_path, NAME, limit=2)["versions"][0]["version"] == "v0.0.3"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def test_with_git_the_gto_tags_give_dates_and_prod_periods(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start")
    registry = Registry(tmp_path, NAME)
    records = [_record("v0.0.1", 40.0, True, []), _record("v0.0.2", 45.5, True, [PROD]),
               _record("v0.0.3", 44.0, False, [])]
    index = _write_index(tmp_path, records)
    for record in records:  # what tasks/register.py does: a commit on the registry branch, GTO's tags
        registry.git_register(record["version"], {f"{NAME}/index.json": index}, "registered")
        if record["promoted"]:
            registry.git_promote(record["version"], "promoted")
    h = registry_history(tmp_path, NAME)
    assert h["dates_from"] == "GTO tags (git)" and h["prod"] == "v0.0.2"
    assert all(v["registered_at"] and v["registered_at"].endswith("Z") for v in h["versions"])
    periods = h["prod_history"]
    assert [p["version"] for p in periods] == ["v0.0.1", "v0.0.2"]  # in GTO's order even within one second
    assert periods[0]["until"] == periods[1]["from"] and periods[1]["until"] is None
    assert [v["prod"] for v in h["versions"]] == [False, True, False]
    assert h["versions"][2]["prod_periods"] == []


def test_an_unreadable_registry_is_an_error_not_an_empty_history(tmp_path):
    index = _write_index(tmp_path, [_record("v0.0.1", 40.0, True, [PROD])])
    index.write_text("{not json")
    with pytest.raises(RegistryInconsistent, match="index.json is unreadable"):
        registry_history(tmp_path, NAME)


def test_the_cache_answers_until_the_registry_changes(tmp_path):
    _write_index(tmp_path, [_record("v0.0.1", 40.0, True, [PROD], registered_at="2026-11-23T02:00:00Z")])
    cache = HistoryCache()
    first = cache.get(tmp_path, NAME)
    assert cache.get(tmp_path, NAME) is first  # unchanged: not read again
    _write_index(tmp_path, [_record("v0.0.1", 40.0, True, [], registered_at="2026-11-23T02:00:00Z"),
                            _record("v0.0.2", 41.0, True, [PROD], registered_at="2026-11-30T02:00:00Z")])
    second = cache.get(tmp_path, NAME)
    assert [v["version"] for v in second["versions"]] == ["v0.0.1", "v0.0.2"] and second["prod"] == "v0.0.2"
