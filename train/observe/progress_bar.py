"""The progress display: a tqdm bar on a terminal, plain log lines with the same numbers elsewhere
(steps/s, tokens/s, MFU, ETA)."""

from __future__ import annotations

import datetime
import logging
import sys
import time

import tqdm

log = logging.getLogger(__name__)


class ProgressBar:
    """A tqdm bar on a terminal; plain log lines (with the same numbers) anywhere else."""

    def __init__(
        self,
        start_step: int,
        total_steps: int,
        tokens_per_step: int,
        flops_per_step: float = 0.0,
        peak_flops_per_sec: float = 0.0,
        devices: int = 1,
    ):
        self.tokens_per_step, self.total, self.devices = tokens_per_step, total_steps, devices
        self.flops_per_step, self.peak = flops_per_step, peak_flops_per_sec
        self._interactive = sys.stderr.isatty()
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not self._interactive,
        )
        self._last_step, self._last_time = start_step, time.perf_counter()

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Call at log steps. Returns the timing since the previous call: steps and tokens per
        second, tokens per second per device, and MFU (model FLOPs per second over the peak)."""
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        tokens_per_sec = steps_per_sec * self.tokens_per_step
        timing = {
            "steps_per_sec": steps_per_sec,
            "tokens_per_sec": tokens_per_sec,
            "tokens_per_sec_per_device": tokens_per_sec / self.devices,
        }
        if self.peak > 0:
            timing["mfu"] = steps_per_sec * self.flops_per_step / self.peak
        mfu = f"  MFU {100 * timing['mfu']:.2f}%" if "mfu" in timing else ""
        eta = (self.total - step) / max(steps_per_sec, 1e-9)
        if self._interactive:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                tok_s=f"{timing['tokens_per_sec']:,.0f}",
                **({"mfu": f"{100 * timing['mfu']:.2f}%"} if "mfu" in timing else {}),
            )
        else:
            log.info(
                "step %d/%d  loss %.4f  %.2f steps/s  %.0f tokens/s%s  ETA %s",
                step,
                self.total,
                metrics.get("loss", float("nan")),
                steps_per_sec,
                timing["tokens_per_sec"],
                mfu,
                datetime.timedelta(seconds=round(eta)),
            )
        return timing

    def message(self, text: str) -> None:
        if self._interactive:
            self._bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        self._bar.close()
