"""The serving layer's pure parts: request validation (every field named) and the dynamic batcher."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from uqa.serving.batcher import BatchSettings, DynamicBatcher, Overloaded
from uqa.serving.schema import MAX_ITEMS, RequestError, parse_body

Q = {"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"}


def _refused(body) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as info:
        parse_body(raw)
    return info.value


def test_a_single_question_and_a_list_parse():
    items, is_list = parse_body(json.dumps({**Q, "id": "a"}).encode())
    assert (is_list, items[0].id, items[0].question) == (False, "a", Q["question"])
    items, is_list = parse_body(json.dumps([Q, {**Q, "id": 7}]).encode())
    assert is_list and [i.id for i in items] == [None, 7]


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    ("\"just a string\"", 422, "body"),
    ({"context": "x"}, 422, "body.question"),
    ({"question": "x"}, 422, "body.context"),
    ({"question": 5, "context": "x"}, 422, "body.question"),
    ({"question": "x", "context": ["x"]}, 422, "body.context"),
    ({"question": "", "context": "x"}, 422, "body.question"),
    ({"question": "x", "context": "   "}, 422, "body.context"),
    ({"question": "x", "context": "y", "id": [1]}, 422, "body.id"),
    ({"question": "x", "context": "y", "extra": 1}, 422, "body.extra"),
    ([Q, {"question": "x", "context": ""}], 422, "body[1].context"),
    ([Q, {"context": "x"}], 422, "body[1].question"),
    ([], 422, "body"),
    ([Q] * (MAX_ITEMS + 1), 422, "body"),
])
def test_bad_bodies_are_refused_naming_the_field(body, status, field):
    if isinstance(body, str):
        body = body.encode()
    err = _refused(body)
    assert (err.status, err.field) == (status, field), err.message
    assert err.message and field in (err.message + " " + (err.field or ""))


def _run_batcher(settings: BatchSettings, run, coro_factory):
    async def main():
        batcher = DynamicBatcher(run, settings)
        await batcher.start()
        try:
            return await coro_factory(batcher), batcher.stats
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_requests_that_arrive_together_share_one_call():
    calls = []

    def run(batch):
        calls.append([p for p in batch])
        time.sleep(0.05)  # a forward pass: the next requests gather meanwhile
        return [[x * 10 for x in p] for p in batch]

    async def clients(batcher):
        return await asyncio.gather(*(batcher.submit([i, i + 1], size=2) for i in range(0, 20, 2)))

    results, stats = _run_batcher(BatchSettings(max_batch_size=8, max_wait_ms=20, max_queue=100), run, clients)
    assert results == [[i * 10, (i + 1) * 10] for i in range(0, 20, 2)]  # each its own answers, in order
    assert all(sum(len(p) for p in c) <= 8 for c in calls)  # never more than max_batch_size items
    assert len(calls) < 10 and stats.largest_batch == 8  # requests shared calls
    assert [x for c in calls for p in c for x in p] == list(range(20))  # arrival order, nothing lost


def test_max_batch_size_one_is_one_call_per_request():
    calls = []

    def run(batch):
        calls.append(batch)
        return [p for p in batch]

    async def clients(batcher):
        return await asyncio.gather(*(batcher.submit([i]) for i in range(6)))

    results, _ = _run_batcher(BatchSettings(max_batch_size=1, max_wait_ms=0), run, clients)
    assert results == [[i] for i in range(6)] and len(calls) == 6


def test_an_error_for_one_request_reaches_only_that_request():
    def run(batch):
        return [ValueError(f"bad {p}") if p == ["bad"] else p for p in batch]

    async def clients(batcher):
        return await asyncio.gather(*(batcher.submit(p) for p in (["a"], ["bad"], ["c"])), return_exceptions=True)

    results, _ = _run_batcher(BatchSettings(max_batch_size=8, max_wait_ms=10), run, clients)
    assert results[0] == ["a"] and results[2] == ["c"]
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad ['bad']"


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    state = {"n": 0}

    def run(batch):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("boom")
        return batch

    async def clients(batcher):
        first = await asyncio.gather(batcher.submit(["x"]), return_exceptions=True)
        second = await batcher.submit(["y"])
        return first[0], second

    (first, second), _ = _run_batcher(BatchSettings(max_wait_ms=0), run, clients)
    assert isinstance(first, RuntimeError) and second == ["y"]


def test_more_waiting_than_the_bound_is_refused_not_queued():
    release = threading.Event()

    def run(batch):
        release.wait(5)
        return batch

    async def clients(batcher):
        running = asyncio.ensure_future(batcher.submit(["first"], size=1))  # taken, its forward blocks
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.submit([i], size=2)) for i in range(2)]  # 4 of 4 waiting
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(["one too many"], size=1)
        assert info.value.retry_after >= 1 and batcher.waiting == 4
        release.set()
        return [await running] + [await w for w in waiting]

    results, _ = _run_batcher(BatchSettings(max_batch_size=1, max_wait_ms=0, max_queue=4), run, clients)
    assert results == [["first"], [0], [1]]


def test_invalid_batch_settings_are_refused():
    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            BatchSettings(**bad)


def test_the_scheduler_is_uqa_schedule_and_serve_cron_points_to_it(capsys):
    from uqa_cli.main import build_parser, cmd_schedule, main

    args = build_parser().parse_args(["schedule", "--cron", "0 3 * * 2", "--timezone", "UTC"])
    assert args.func is cmd_schedule and (args.cron, args.timezone, args.name) == ("0 3 * * 2", "UTC", "weekly-serve")
    assert main(["serve", "--cron", "0 2 * * 1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "uqa schedule --cron '0 2 * * 1'" in err


def test_serve_options_are_checked_before_anything_loads(tmp_path, capsys):
    from uqa_cli.main import main

    assert main(["serve", "--project", str(tmp_path), "--model", str(tmp_path / "nowhere")]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_repeated_warning_is_logged_once_a_minute_with_a_count():
    import logging

    from uqa.serving.cli import OncePerMinute

    f = OncePerMinute(seconds=60)

    def rec(msg, level=logging.WARNING):
        return logging.LogRecord("uqa.predict", level, __file__, 1, msg, (), None)

    assert f.filter(rec("%d question(s) leave few tokens"))
    assert not f.filter(rec("%d question(s) leave few tokens"))
    assert f.filter(rec("another warning")) and f.filter(rec("an error", logging.ERROR))
    assert f.filter(rec("an error", logging.ERROR))
    f.last[("uqa.predict", "%d question(s) leave few tokens")] -= 61  # a minute later
    again = rec("%d question(s) leave few tokens")
    assert f.filter(again) and "(1 more like this in the last minute)" in again.msg
