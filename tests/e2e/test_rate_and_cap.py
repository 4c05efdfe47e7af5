"""Pacing against the sandbox with a render cap and a rate limit together: the
render cap is learned as it is (rate-limit 429s are not taken for it), on a
fresh run and on a resume whose renders are adopted."""

from __future__ import annotations

from typing import Any

from e2e_support import assert_exactly_once, prompts

from batcher.run.batch_run import BatchRun

BOTH_FAULTS: dict[str, Any] = {
    "render_seconds": 0.4,
    "render_jitter": 0.2,
    "max_in_flight": 6,
    "rate_limit": 12.0,
    "seed": 11,
}


def test_a_rate_limit_is_not_learned_as_a_render_cap(make_batch: Any) -> None:
    batch = make_batch(prompts(36), **BOTH_FAULTS)
    seen: dict[str, Any] = {}

    def look(run: BatchRun) -> None:
        seen["cap"] = run.gate.cap
        seen["throttled"] = run.counters.throttled

    summary = batch.run(concurrency=32, after=look)
    assert summary.states["complete"] == 36
    stats = batch.sandbox.stats()
    assert stats.rate_limit_429s > 0, "the rate limit was hit"
    assert stats.render_cap_429s > 0, "the render cap was hit"
    assert seen["cap"] == 6  # the account's cap, neither lowered nor overshot
    assert_exactly_once(batch)


def test_after_a_resume_adopted_renders_count_as_in_flight(make_batch: Any) -> None:
    batch = make_batch(prompts(18), **BOTH_FAULTS)
    first = batch.run(concurrency=32, wait=False)  # submit only: renders left to adopt
    assert first.states["submitted"] + first.states["pending"] == 18
    seen: dict[str, Any] = {}

    def look(run: BatchRun) -> None:
        seen["cap"] = run.gate.cap

    summary = batch.run(resume=True, concurrency=32, after=look)
    assert summary.states["complete"] == 18
    assert seen["cap"] in (None, 6)  # never below the account's cap
    assert_exactly_once(batch)
