"""The one backoff policy (:mod:`dreamgen_async.retry`) and the rule that retries never nest."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest

from dreamgen_async import ComfyUIClient, RetryPolicy, ServerError
from dreamgen_async.retry import Backoff, in_retry_loop, retry_call, single_attempts
from dreamgen_async.testing import ComfyUISimulator


def test_delays_are_jittered_exponential_with_a_floor_and_a_cap() -> None:
    backoff = Backoff(initial=0.1, cap=1.0)
    delays = list(itertools.islice(backoff.delays(), 8))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_a_loop_that_retries_for_days_stays_at_the_cap() -> None:
    backoff = Backoff(initial=0.1, cap=5.0)
    for attempt in (64, 1_100, 10**6):  # 0.1 * 2.0**1099 would overflow
        assert 2.5 <= backoff.delay(attempt) <= 5.0


def test_a_retry_after_wins_and_is_capped() -> None:
    class Throttled(Exception):
        retry_after = 99.0

    assert Backoff(max_retry_after=3.0).delay(1, Throttled()) == 3.0


async def test_retry_call_retries_what_retry_if_allows_and_raises_the_rest() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return "ok"

    fast = Backoff(initial=0.001, cap=0.002)
    assert await retry_call(flaky, fast, retry_if=lambda e: isinstance(e, ConnectionError)) == "ok"
    assert len(calls) == 3

    async def broken() -> str:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await retry_call(broken, fast, retry_if=lambda e: isinstance(e, ConnectionError))
    with pytest.raises(ConnectionError):
        await retry_call(flaky_forever, fast, retry_if=lambda e: True, attempts=2)


async def test_retry_call_gives_every_attempt_the_same_arguments() -> None:
    seen: list[tuple[str, int]] = []

    async def flaky(name: str, size: int) -> str:
        seen.append((name, size))
        if len(seen) < 3:
            raise ConnectionError("again")
        return name * size

    fast = Backoff(initial=0.001, cap=0.002)
    assert await retry_call(flaky, fast, "ab", 2, retry_if=lambda e: True) == "abab"
    assert seen == [("ab", 2)] * 3


async def flaky_forever() -> str:
    raise ConnectionError("never")


@dataclass(frozen=True)
class _RecordingBackoff(Backoff):
    """Backs off for no time, and notes which attempt each delay followed."""

    asked: list[int] = field(default_factory=list)

    def delay(self, attempt: int, error: BaseException | None = None) -> float:
        self.asked.append(attempt)
        return 0.0


async def test_retry_call_numbers_its_attempts_as_one_loop() -> None:
    """The first attempt is made outside tenacity; the count, the backoff's attempt numbers
    and the stop still run as one loop of ``attempts``."""
    calls: list[bool] = []

    async def failing() -> str:
        calls.append(in_retry_loop())
        raise ConnectionError("down")

    backoff = _RecordingBackoff()
    with pytest.raises(ConnectionError):
        await retry_call(failing, backoff, retry_if=lambda e: True, attempts=4)
    assert calls == [True, True, True, True]  # every attempt inside the loop's mark
    # The delays after attempts 1, 2 and 3 (tenacity also computes, never sleeps, the one
    # after the last attempt: the same numbers as when tenacity ran the whole loop).
    assert backoff.asked == [1, 2, 3, 4]

    async def fine() -> str:
        return "ok"

    quiet = _RecordingBackoff()
    assert await retry_call(fine, quiet, retry_if=lambda e: True, attempts=4) == "ok"
    assert quiet.asked == []
    assert not in_retry_loop()  # the mark ends with the loop

    calls.clear()
    with pytest.raises(ConnectionError):  # no time left after the first failure: no retry
        await retry_call(failing, _RecordingBackoff(), retry_if=lambda e: True, max_time=0.0)
    assert len(calls) == 1


async def test_the_mark_belongs_to_the_task_that_set_it() -> None:
    assert not in_retry_loop()
    with single_attempts():
        assert in_retry_loop()
        spawned = asyncio.create_task(asyncio.sleep(0, result=None))
        child = asyncio.create_task(_in_loop())
        assert not await child  # inherited the context, but it is another task
        await spawned
    assert not in_retry_loop()


async def _in_loop() -> bool:
    return in_retry_loop()


async def test_a_request_inside_a_retry_loop_attempts_once(comfyui_sim: ComfyUISimulator) -> None:
    policy = RetryPolicy(attempts=5, initial_delay=0.001, max_delay=0.002)
    async with ComfyUIClient(comfyui_sim.url, retry=policy) as client:
        comfyui_sim.fail_next("/queue", 3, status=503)
        attempts = 0

        async def read() -> object:
            nonlocal attempts
            attempts += 1
            return await client.get_queue()

        await retry_call(read, policy.backoff, retry_if=lambda e: isinstance(e, ServerError))
        # 3 failures then success, each a single request: the inner request did not retry.
        assert attempts == 4
        assert len(comfyui_sim.requests_to("/queue", "GET")) == 4
        comfyui_sim.fail_next("/queue", 2, status=503)
        await client.get_queue()  # outside a loop, the request retries by itself
        assert len(comfyui_sim.requests_to("/queue", "GET")) == 7
