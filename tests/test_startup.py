"""What every entry point does before JAX starts (train/devices/startup.py), as the tests see it:
conftest calls it as the entry points do."""

from __future__ import annotations

import gc

from train.devices.tracing_gc import THRESHOLDS, collect_less_often


def test_the_cycle_collector_runs_less_often_and_a_higher_setting_is_kept():
    assert gc.isenabled() and gc.get_threshold() == THRESHOLDS
    before = gc.get_threshold()
    try:
        gc.set_threshold(THRESHOLDS[0] * 2, 1, THRESHOLDS[2] * 3)
        collect_less_often()
        assert gc.get_threshold() == (THRESHOLDS[0] * 2, THRESHOLDS[1], THRESHOLDS[2] * 3)
    finally:
        gc.set_threshold(*before)
