"""Evaluation on a fixed eval set: the same batches, masks and references at every eval.

An objective with `for_eval()` is evaluated in that form: MLM with every selected token turned
into [MASK], the hybrid in its causal view. MLM eval draws its masking pattern once, from a key
shared by every run whatever its seed, so the model's loss and the HMM oracle's measure the same
thing and runs with different seeds are scored on the same positions.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from train.devices.mesh import to_global, traced_in
from train.loop import step as step_lib
from train.objectives import Objective

_EVAL_MASK_KEY = 0x5EED


def fixed_eval_set(
    source: Any, objective: Objective, *, eval_form: bool = True
) -> tuple[Objective, list[dict], dict | None]:
    """(the eval objective, transformed global batches on the host, references or None).

    `eval_form=False` evaluates `objective` exactly as given (e.g. the hybrid's masked view).

    References are the HMM's exact losses, or, for the causal LM on real text, the number of
    UTF-8 bytes its scored targets stand for (for bits per byte).
    """
    eval_objective = objective.for_eval() if eval_form and hasattr(objective, "for_eval") else objective
    transform = jax.jit(eval_objective.transform)
    key = jax.random.PRNGKey(_EVAL_MASK_KEY)
    raw_batches = source.eval_batches()
    host_batches = [
        jax.device_get(transform(b, jax.random.fold_in(key, i))) for i, b in enumerate(raw_batches)
    ]
    reference, table = None, None
    if hasattr(source, "reference_losses") and eval_objective.oracle:
        raw = np.concatenate([b["tokens"] for b in raw_batches])
        scored = np.concatenate([np.asarray(eval_objective.scored_tokens(b)) for b in host_batches])
        reference = source.reference_losses(eval_objective.oracle, raw, scored)
    elif hasattr(source, "bytes_per_token") and eval_objective.oracle == "clm":
        table = source.bytes_per_token()
    if reference is None and table is not None:
        n_bytes = sum(float((table[b["targets"]] * b["weights"]).sum()) for b in host_batches)
        reference = {"target_bytes": n_bytes}
    return eval_objective, host_batches, reference


def _rows_of_this_process(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = next(iter(batch.values())).shape[0] // jax.process_count()
    i = jax.process_index()
    return {k: v[i * n : (i + 1) * n] for k, v in batch.items()}


class Evaluator:
    """Loss, accuracy, perplexity on the fixed eval set.

    Plus gap and captured on the HMM corpus, or bits per byte for the causal LM on real text.
    """

    def __init__(
        self, source: Any, objective: Objective, graphdef, mask_kind: str, sharding, *, eval_form: bool = True
    ):
        eval_objective, host_batches, self.reference = fixed_eval_set(source, objective, eval_form=eval_form)
        self.batches = [to_global(_rows_of_this_process(b), sharding) for b in host_batches]
        self._step = jax.jit(
            traced_in(
                getattr(sharding, "mesh", None), step_lib.make_eval_step(graphdef, eval_objective, mask_kind)
            )
        )

    def __call__(self, params: Any, model_state: Any) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.batches:
            for k, v in jax.device_get(self._step(params, model_state, batch)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        n = max(totals["weight_sum"], 1.0)
        out = {
            "loss": totals["nll_sum"] / n,
            "accuracy": totals["correct_sum"] / n,
            "perplexity": float(np.exp(totals["nll_sum"] / n)),
            "predicted_tokens": totals["weight_sum"],
        }
        if "exact_sum" in totals:  # seq2seq: rows greedy decoding gets exactly right
            out["exact_match"] = totals["exact_sum"] / max(totals["rows_sum"], 1.0)
        if self.reference and "target_bytes" in self.reference:
            out["bits_per_byte"] = totals["nll_sum"] / math.log(2) / self.reference["target_bytes"]
        elif self.reference:
            oracle, unigram = self.reference["oracle_loss"], self.reference["unigram_loss"]
            out.update(
                oracle_loss=oracle,
                unigram_loss=unigram,
                gap=out["loss"] / oracle - 1.0,
                captured=(unigram - out["loss"]) / (unigram - oracle),
            )
        return out
