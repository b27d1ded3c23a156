"""The loop body: step, log, eval, save, each a method short enough to read whole.

The host reads the step's metrics only at log and eval steps (no extra sync per step); there
the non-finite guard sees every step since the last check before anything is logged, evaluated
or saved. When to save, and when to stop after a preemption, is `SavePolicy`'s decision.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from train.checkpoint.format import LoopState
from train.checkpoint.manager import Checkpointer
from train.checkpoint.nonfinite import NonFiniteError, NonFiniteWatch, failure_message
from train.checkpoint.policy import SavePolicy
from train.checkpoint.preemption import Preempted, PreemptionHandler
from train.devices.mesh import to_global
from train.loop.build import Run
from train.loop.evaluator import Evaluator
from train.observe.metrics import MetricsWriter
from train.observe.observer import Observer
from train.observe.wandb_log import WandbLogger


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """What one session of the loop did: steps run, wall time and the last eval's metrics."""

    steps_run: int  # in this session
    train_seconds: float  # the loop's wall time, evals and checkpoints included
    eval_metrics: dict[str, float]  # the last eval's


class Loop:
    """The training loop of one session: it owns the train state between steps, the log window
    (metrics not yet logged), the non-finite guard and the metrics writer."""

    def __init__(
        self,
        run: Run,
        workdir: str,
        checkpointer: Checkpointer,
        preemption: PreemptionHandler,
        state: Any,
        loop_state: LoopState,
        chief: bool,
    ):
        config = run.config
        self.built_run, self.config = run, config
        self.checkpointer, self.preemption = checkpointer, preemption
        self.state, self.start_step = state, int(state.step)
        wandb = WandbLogger(config, workdir) if chief and config.wandb.project else None
        self.writer = MetricsWriter(workdir, resume_step=self.start_step, enabled=chief, wandb=wandb)
        self.evaluator = Evaluator(run.source, run.objective, run.graphdef, config.mask, run.data_sharding)
        self.observer = Observer(config, workdir, run, state.params, self.start_step, self.writer)
        # A checkpoint taken between log steps (preemption) carries its window's metrics.
        self.window: list[dict] = [{k: np.float32(v) for k, v in m.items()} for m in loop_state.window]
        self.watch = NonFiniteWatch(config.nonfinite, config.max_skipped_in_a_row)
        self.watch.skipped_in_a_row = loop_state.skipped_in_a_row
        self.unchecked: list[tuple[int, dict]] = []
        self.policy = SavePolicy(
            config.checkpoint_every_steps,
            config.checkpoint_every_minutes,
            config.num_train_steps,
            preemption.stop_at,
        )
        self.data_state: dict = {}

    def run(self, compiled_step: Callable, batch: dict, train_iter: Any) -> LoopResult:
        """Steps from the state's step to `num_train_steps`; raises `Preempted` after saving when
        a signal arrives, `NonFiniteError` when the guard stops the run."""
        config, eval_metrics = self.config, {}
        t_loop, steps_run = time.perf_counter(), 0
        self.preemption.start(self.start_step)
        for step in range(self.start_step + 1, config.num_train_steps + 1):
            self.train_step(step, compiled_step, batch, train_iter)
            steps_run += 1
            last = step == config.num_train_steps
            if not last:
                batch = next(train_iter)  # overlaps host work with the async device step
            log_now = step % config.log_every_steps == 0 or last
            eval_now = step % config.eval_every_steps == 0 or last
            if log_now or eval_now:
                self.stop_if_nonfinite()
            if log_now:
                self.log(step)
            if eval_now:
                eval_metrics = self.evaluate(step)
            self.save_or_stop(step, log_now)
        if not eval_metrics:  # the workdir already held the final step
            eval_metrics = self.evaluator(self.state.params, self.state.model_state)
        return LoopResult(steps_run, time.perf_counter() - t_loop, eval_metrics)

    def train_step(self, step: int, compiled_step: Callable, batch: dict, train_iter: Any) -> None:
        self.observer.before_step(step)
        self.state, metrics = compiled_step(self.state, to_global(batch, self.built_run.data_sharding))
        metrics = self.observer.after_step(step, self.state, metrics)
        self.data_state = train_iter.get_state()  # the position after every batch used so far
        self.window.append(metrics)
        self.unchecked.append((step, metrics))

    def stop_if_nonfinite(self) -> None:
        """Every step since the last check, in order; stops before this window is logged,
        evaluated or saved, so every checkpoint holds finite parameters."""
        problem = self.watch.check(jax.device_get(self.unchecked))
        self.unchecked = []
        if problem:
            self.close()  # every checkpoint in flight is committed
            directory = self.checkpointer.directory
            raise NonFiniteError(failure_message(problem, self.checkpointer.latest_step(), directory))

    def log(self, step: int) -> None:
        """The window's mean loss, accuracy and gradient norm (and skipped steps) as one line."""
        fetched = jax.device_get(self.window)
        row = {k: float(np.mean([m[k] for m in fetched])) for k in ("loss", "accuracy", "grad_norm")}
        row["learning_rate"] = float(fetched[-1]["learning_rate"])
        # Mean per step over the window: times log_every_steps it is the exact count.
        row["predicted_tokens"] = float(np.mean([m["predicted_tokens"] for m in fetched]))
        if self.config.nonfinite == "skip":
            row["skipped_steps"] = float(sum(m["skipped"] for m in fetched))
        self.window = []
        self.writer.write(step, "train", row)
        self.observer.at_log(step, row)

    def evaluate(self, step: int) -> dict[str, float]:
        """The eval metrics, written and shown; a non-finite eval loss stops the run (exit 3)."""
        metrics = self.evaluator(self.state.params, self.state.model_state)
        if not np.isfinite(metrics["loss"]):
            self.close()
            problem = f"the eval at step {step}: loss={metrics['loss']}"
            raise NonFiniteError(
                failure_message(problem, self.checkpointer.latest_step(), self.checkpointer.directory)
            )
        self.writer.write(step, "eval", metrics)
        self.observer.at_eval(step, self.state.params, self.state.model_state)
        rounded = {k: round(v, 4) for k, v in metrics.items()}
        self.observer.progress_bar.message(f"eval step {step}: {json.dumps(rounded)}")
        return metrics

    def save_or_stop(self, step: int, at_log_step: bool) -> None:
        decision = self.policy.decide(step, at_log_step)
        if decision.save:
            self.stop_if_nonfinite()
            self.save(step)
        if decision.stop_signal is not None:
            self.close()  # waits until the checkpoint is committed
            raise Preempted(decision.stop_signal, step, self.checkpointer.directory)

    def save(self, step: int) -> None:
        window = [{k: float(v) for k, v in m.items()} for m in jax.device_get(self.window)]
        loop_state = LoopState(window, self.watch.skipped_in_a_row)
        self.checkpointer.save(step, self.state, self.data_state, self.built_run.identity, loop_state)

    def close(self) -> None:
        self.observer.close()
        self.checkpointer.wait()
        self.checkpointer.close()
        self.writer.close()
