"""What a run shows besides its metrics, in one place for the trainer's loop: throughput and MFU
(progress line, TensorBoard `perf/*`, `summary.json`), the profiler window, per-layer
statistics and samples at eval. docs/observability.md says what each is and costs.

MFU is model FLOPs per second over the peak: the FLOPs of a step are counted by
`train.observe.flops.step_flops` (the count `experiments.bench` reports), the peak comes from
`train.observe.flops.device_peak` (`peak_flops_per_device`, else a data sheet, else measured; on CPU a
smaller matmul than the benchmark's, so that starting a run stays quick). Timing never enters
`metrics.jsonl`, which stays deterministic.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from train.observe.flops import device_peak, step_flops
from train.observe.metrics import MetricsWriter
from train.observe.profiling import ProfileWindow
from train.observe.progress_bar import ProgressBar
from train.observe.samples import EvalSamples

log = logging.getLogger(__name__)


class Observer:
    """What the loop calls besides its metrics: the progress bar with throughput and MFU, the
    profiler window, per-layer statistics at log steps and samples at eval; `summary` gives the
    session's mean MFU for `summary.json`."""

    def __init__(
        self, config: Any, workdir: str, run: Any, params: Any, start_step: int, writer: MetricsWriter
    ):
        self.writer = writer
        self.flops_per_step = step_flops(config, run.objective, params, run.vocab_size)
        self.peak, self.peak_source = device_peak(config.peak_flops_per_device, matmul_n=1024, repeats=3)
        tokens_per_step = config.batch_size * config.seq_len
        self.progress_bar = ProgressBar(
            start_step,
            config.num_train_steps,
            tokens_per_step,
            self.flops_per_step,
            self.peak,
            jax.device_count(),
        )
        self.profile = ProfileWindow(config.profile.start_step, config.profile.num_steps, workdir, start_step)
        self.samples = None
        if config.eval_samples and config.objective != "seq2seq":
            if jax.process_count() == 1:
                self.samples = EvalSamples(
                    run.source, run.graphdef, config.objective, config.mask, config.eval_samples
                )
            else:
                log.info("eval samples are written by single-process runs only")
        self._layer_stats: Any = None

    def before_step(self, step: int) -> None:
        self.profile.before(step)

    def after_step(self, step: int, state: Any, metrics: dict) -> dict:
        """The step's metrics without its layer statistics, which are kept until the next log."""
        stats = metrics.pop("layer_stats", None)
        if stats is not None:
            self._layer_stats = stats
        self.profile.after(step, state)
        return metrics

    def at_log(self, step: int, row: dict[str, float]) -> None:
        self.writer.scalars(step, "perf", self.progress_bar.update(step, row))
        if self._layer_stats is not None:
            stats = jax.device_get(self._layer_stats)
            self.writer.layer_stats(step, {g: {k: float(v) for k, v in s.items()} for g, s in stats.items()})

    def at_eval(self, step: int, params: Any, model_state: Any) -> None:
        if self.samples is not None:
            for tag, markdown in self.samples(params, model_state).items():
                self.writer.text(step, tag, markdown)

    def summary(self, steps_run: int, train_seconds: float) -> dict[str, Any]:
        """The session's mean MFU: its steps' model FLOPs over the loop's wall time (evals and
        checkpoints included) and the peak."""
        achieved = steps_run * self.flops_per_step / max(train_seconds, 1e-9)
        return {
            "mfu_mean": achieved / self.peak if self.peak else None,
            "model_flops_per_step": self.flops_per_step,
            "peak_flops_per_sec": self.peak,
            "peak_source": self.peak_source,
        }

    def close(self) -> None:
        self.progress_bar.close()
        self.profile.close()
