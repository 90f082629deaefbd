"""The serving layer's pure parts: request validation (every field named, nothing a stranger sends is a
500) and the scheduler's turns (with a stand-in for the model's forward pass)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from uqa.serving.scheduler import Job, Overloaded, ScheduleSettings, TooMuchWork, WindowScheduler
from uqa.serving.schema import MAX_ITEMS, RequestError, parse_body

Q = {"question": "کیا ہے؟", "context": "یہ ایک شہر ہے۔"}


def _refused(body) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as info:
        parse_body(raw)
    return info.value


def test_a_single_question_a_list_and_the_hugging_face_payload_parse():
    ask = parse_body(json.dumps({**Q, "id": "a"}).encode())
    assert (ask.is_list, ask.hf, ask.items[0].id, ask.items[0].question) == (False, False, "a", Q["question"])
    ask = parse_body(json.dumps([Q, {**Q, "id": 7}]).encode())
    assert ask.is_list and [i.id for i in ask.items] == [None, 7]
    ask = parse_body(json.dumps({"inputs": Q, "parameters": {"top_k": 3, "handle_impossible_answer": False}}).encode())
    assert (ask.hf, ask.is_list, ask.top_k, ask.parameters.handle_impossible_answer) == (True, False, 3, False)
    ask = parse_body(json.dumps({"inputs": [Q, Q]}).encode())
    assert (ask.hf, ask.is_list, ask.top_k, len(ask.items)) == (True, True, 1, 2)


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b"\xff\xfe{}", 400, "body"),  # not UTF-8
    (b"[" * 60_000, 400, "body"),  # deeper than the parser goes
    (b'{"question": "x", "context": "y", "id": ' + b"9" * 5000 + b"}", 400, "body"),  # over Python's digit limit
    (b'{"question": "x", "context": "y", "id": NaN}', 400, "body"),
    ("\"just a string\"", 422, "body"),
    ({"context": "x"}, 422, "body.question"),
    ({"question": "x"}, 422, "body.context"),
    ({"question": 5, "context": "x"}, 422, "body.question"),
    ({"question": "x", "context": ["x"]}, 422, "body.context"),
    ({"question": "", "context": "x"}, 422, "body.question"),
    ({"question": "x", "context": "   "}, 422, "body.context"),
    ({"question": "x", "context": "y", "id": [1]}, 422, "body.id"),
    ({"question": "x", "context": "y", "id": 2**64}, 422, "body.id"),
    ({"question": "x", "context": "y", "extra": 1}, 422, "body.extra"),
    ([Q, {"question": "x", "context": ""}], 422, "body[1].context"),
    ([Q, {"context": "x"}], 422, "body[1].question"),
    ([], 422, "body"),
    ([Q] * (MAX_ITEMS + 1), 422, "body"),
    ({"inputs": {"question": "x"}}, 422, "body.inputs.context"),
    ({"inputs": Q, "parameters": {"top_k": 0}}, 422, "body.parameters.top_k"),
    ({"inputs": Q, "parameters": {"top_k": "3"}}, 422, "body.parameters.top_k"),
    ({"inputs": Q, "parameters": {"temperature": 1}}, 422, "body.parameters.temperature"),
    ({"inputs": Q, "other": 1}, 422, "body.other"),
])
def test_bad_bodies_are_refused_naming_the_field(body, status, field):
    if isinstance(body, str):
        body = body.encode()
    err = _refused(body)
    assert (err.status, err.field) == (status, field), err.message
    assert err.message and field in (err.message + " " + (err.field or ""))
    assert "sys.set_int_max_str_digits" not in err.message


# -- the scheduler, with a stand-in for the model's forward pass ----------------------------------------


class _Windows:
    def __init__(self, n: int):
        self.n_windows = n
        self.lengths = np.full(n, 4)


class _Prepared:
    def __init__(self, n: int):
        self.windows = _Windows(n)

    @property
    def n_windows(self) -> int:
        return self.windows.n_windows


class _Served:
    def __init__(self, windows_per_pass: int):
        self.predictor = type("P", (), {"batch_size": windows_per_pass})()
        self.version = "v1"


class _Recording(WindowScheduler):
    """Records which job each pass served (by name); a pass takes `seconds`."""

    def __init__(self, settings, seconds: float = 0.01):
        super().__init__(settings)
        self.passes: list[list[tuple[str, int]]] = []
        self.seconds = seconds

    def _run_pass(self, taken):
        time.sleep(self.seconds)
        self.passes.append([(job.name, len(idx)) for job, idx in taken])


def _job(name: str, windows: int, served, loop, timeout: float = 30.0) -> Job:
    job = Job(served, _Prepared(windows), lambda prepared, logits: name, loop.create_future(),
              deadline=time.monotonic() + timeout)
    job.name = name
    return job


def _schedule(settings: ScheduleSettings, body, seconds: float = 0.01):
    async def main():
        scheduler = _Recording(settings, seconds)
        await scheduler.start()
        try:
            return await body(scheduler, asyncio.get_running_loop()), scheduler
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def test_a_small_question_rides_in_the_next_pass_beside_big_requests():
    served = _Served(windows_per_pass=8)
    finished = []

    async def body(scheduler, loop):
        big = [_job(f"big{i}", 40, served, loop) for i in range(4)]
        for job in big:
            scheduler.admit(job)
        await asyncio.sleep(0.03)  # the big ones are under way
        small = _job("small", 1, served, loop)
        scheduler.admit(small)
        done_when_it_came = len(scheduler.passes)
        for future in asyncio.as_completed([j.future for j in (*big, small)]):
            finished.append(await future)
        return done_when_it_came

    done_when_it_came, scheduler = _schedule(ScheduleSettings(max_wait_ms=0), body)
    assert finished[0] == "small"  # answered first, though it came last
    first_with_small = next(i for i, p in enumerate(scheduler.passes) if ("small", 1) in p)
    # in the pass after the one under way when it came (not after the 160 windows queued before it)
    assert first_with_small <= done_when_it_came + 1
    assert all(sum(n for _, n in p) <= 8 for p in scheduler.passes)  # never more than a pass holds
    shares = scheduler.passes[first_with_small + 1]
    assert sorted(n for _, n in shares) == [2, 2, 2, 2]  # then four equal shares of the pass
    assert scheduler.stats.windows == 161


def test_a_request_over_the_cap_or_past_the_queue_bound_is_refused():
    served = _Served(windows_per_pass=2)

    async def body(scheduler, loop):
        with pytest.raises(TooMuchWork) as too_big:
            scheduler.admit(_job("huge", 11, served, loop))
        assert (too_big.value.windows, too_big.value.cap) == (11, 10)
        assert "11 windows" in str(too_big.value) and "the cap is 10" in str(too_big.value)
        first = _job("a", 10, served, loop)
        scheduler.admit(first)
        await asyncio.sleep(0.005)
        second = _job("b", 8, served, loop)
        with pytest.raises(Overloaded) as full:
            scheduler.admit(second)
        assert full.value.retry_after >= 1
        return await first.future

    result, _ = _schedule(ScheduleSettings(max_request_windows=10, max_queue_windows=12, max_wait_ms=0), body)
    assert result == "a"


def test_a_request_past_its_deadline_or_gone_is_dropped_not_computed():
    served = _Served(windows_per_pass=1)

    async def body(scheduler, loop):
        late = _job("late", 50, served, loop, timeout=0.1)
        gone = _job("gone", 50, served, loop)
        kept = _job("kept", 3, served, loop)
        for job in (late, gone, kept):
            scheduler.admit(job)
        await asyncio.sleep(0.05)
        gone.future.cancel()  # what the app does when the client disconnects
        result = await kept.future
        await asyncio.sleep(0.3)
        return result, late, gone

    (result, late, gone), scheduler = _schedule(ScheduleSettings(max_wait_ms=0), body, seconds=0.005)
    assert result == "kept"
    computed = {name: sum(n for p in scheduler.passes for j, n in p if j == name) for name in ("late", "gone")}
    assert computed["late"] < 50 and computed["gone"] < 50  # their remaining windows were never computed
    assert scheduler.stats.dropped == 2 and late.cancelled == "deadline"


def test_a_failing_pass_fails_its_requests_and_the_scheduler_goes_on():
    served = _Served(windows_per_pass=4)

    class Failing(_Recording):
        def _run_pass(self, taken):
            if not self.passes:
                self.passes.append([])
                raise RuntimeError("boom")
            super()._run_pass(taken)

    async def main():
        scheduler = Failing(ScheduleSettings(max_wait_ms=0))
        await scheduler.start()
        try:
            loop = asyncio.get_running_loop()
            first = _job("x", 2, served, loop)
            scheduler.admit(first)
            with pytest.raises(RuntimeError, match="boom"):
                await first.future
            second = _job("y", 2, served, loop)
            scheduler.admit(second)
            return await second.future
        finally:
            await scheduler.stop()

    assert asyncio.run(main()) == "y"


def test_invalid_scheduling_settings_are_refused():
    for bad in ({"max_request_windows": 0}, {"max_queue_windows": 1, "max_request_windows": 2}, {"max_wait_ms": -1},
                {"timeout_s": 0}):
        with pytest.raises(ValueError):
            ScheduleSettings(**bad)


def test_the_scheduler_is_uqa_schedule_and_serve_cron_points_to_it(capsys):
    from uqa_cli.main import build_parser, main
    from uqa_cli.runs import cmd_schedule

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
        return logging.LogRecord("uqa.model.predict", level, __file__, 1, msg, (), None)

    assert f.filter(rec("%d question(s) leave few tokens"))
    assert not f.filter(rec("%d question(s) leave few tokens"))
    assert f.filter(rec("another warning")) and f.filter(rec("an error", logging.ERROR))
    assert f.filter(rec("an error", logging.ERROR))
    f.last[("uqa.model.predict", "%d question(s) leave few tokens")] -= 61  # a minute later
    again = rec("%d question(s) leave few tokens")
    assert f.filter(again) and "(1 more like this in the last minute)" in again.msg
