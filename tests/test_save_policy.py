"""When the loop saves (train/checkpoint/policy.py): every N steps, the last step, every M
minutes at log steps only, and the step in flight at preemption, which also stops the loop;
checked against a clock and a preemption answer set by the test."""

from __future__ import annotations

import signal

from train.checkpoint.policy import SavePolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _saves(policy: SavePolicy, steps: range, log_every: int, clock: Clock | None = None, dt: float = 0.0):
    out = []
    for step in steps:
        if clock is not None:
            clock.now += dt
        decision = policy.decide(step, at_log_step=step % log_every == 0)
        if decision.save:
            out.append(step)
    return out


def test_every_n_steps_and_the_last():
    policy = SavePolicy(10, 0.0, last_step=35, stop_at=lambda step: None)
    assert _saves(policy, range(1, 36), log_every=5) == [10, 20, 30, 35]


def test_every_m_minutes_is_decided_at_log_steps_and_restarts_after_each_save():
    clock = Clock()
    policy = SavePolicy(1000, 1.0, last_step=100, stop_at=lambda step: None, clock=clock)
    # 20 s per step: a minute has passed at step 3, but the first log step after it is 5.
    assert _saves(policy, range(1, 21), log_every=5, clock=clock, dt=20.0) == [5, 10, 15, 20]
    clock2 = Clock()
    policy = SavePolicy(1000, 1.0, last_step=100, stop_at=lambda step: None, clock=clock2)
    assert _saves(policy, range(1, 21), log_every=5, clock=clock2, dt=5.0) == [15]  # 75 s at 15


def test_a_step_save_restarts_the_minute_clock():
    clock = Clock()
    policy = SavePolicy(10, 1.0, last_step=100, stop_at=lambda step: None, clock=clock)
    # 10 s per step: step 10 saves by count; a minute after it is step 16, logged at 20 (also 20 by count).
    assert _saves(policy, range(1, 26), log_every=5, clock=clock, dt=10.0) == [10, 20]


def test_preemption_saves_the_step_in_flight_and_stops():
    policy = SavePolicy(10, 0.0, last_step=40, stop_at=lambda step: signal.SIGTERM if step == 13 else None)
    decisions = {step: policy.decide(step, at_log_step=step % 5 == 0) for step in range(1, 14)}
    assert [s for s, d in decisions.items() if d.save] == [10, 13]
    assert [s for s, d in decisions.items() if d.stop_signal is not None] == [13]
    assert decisions[13].stop_signal == signal.SIGTERM


def test_preemption_at_the_last_step_just_finishes():
    policy = SavePolicy(10, 0.0, last_step=20, stop_at=lambda step: signal.SIGINT)
    decision = policy.decide(20, at_log_step=True)
    assert decision.save and decision.stop_signal is None
