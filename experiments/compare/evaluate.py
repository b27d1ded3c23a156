"""Every measurement of one trained run of the comparison, from its checkpoint, cached in the
run's folder as `compare_eval.json` (so an interrupted comparison resumes without re-evaluating):

- its own eval loss against the exact optimum (`captured`), plus the next-token view (every
  position, causal) and the masked-token view where the model has one;
- a linear probe for the hidden HMM state at every layer, against the exact filtering
  (left context) and smoothing (both sides) ceilings;
- minimal-pair accuracy (HMM pairs, one token made improbable), against the HMM's own
  accuracy and the unigram floor; log-likelihood for next-token models, pseudo-log-likelihood
  for BERT;
- fine-tuning all weights to tell two HMMs apart, against the Bayes-optimal accuracy;
- tokens seen and predicted, and training FLOPs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from experiments import runs
from experiments.common import cached_json
from train.observe.flops import step_flops

# Sizes of the downstream evaluations. Rows are 64 tokens (BOS + 63 symbols).
EVALS: dict[str, dict[str, int]] = {
    "cpu": dict(
        probe_train=512,
        probe_eval=256,
        pairs=200,
        finetune_train=4096,
        finetune_eval=1024,
        finetune_steps=300,
    ),
    "gpu": dict(
        probe_train=2048,
        probe_eval=1024,
        pairs=1000,
        finetune_train=16384,
        finetune_eval=1024,
        finetune_steps=1000,
    ),
}
EVAL_SEQ_LEN = 64


def _tokens_predicted(lines: list[dict[str, Any]]) -> float:
    total, previous = 0.0, 0
    for line in (x for x in lines if x["split"] == "train"):
        total += line["predicted_tokens"] * (line["step"] - previous)  # per-step mean x steps
        previous = line["step"]
    return total


EVAL_FILE = "compare_eval.json"  # in each run's folder


def evaluate_run(workdir: str, objective: str, preset: str, seed: int, cache: dict) -> dict[str, Any]:
    """Every measurement of one trained run (cached in `workdir/compare_eval.json`). `cache` holds
    what every run of the comparison shares (the minimal pairs, the fine-tuning task)."""
    return cached_json(
        os.path.join(workdir, EVAL_FILE), lambda: _evaluate(workdir, objective, preset, seed, cache)
    )


def _evaluate(workdir: str, objective: str, preset: str, seed: int, cache: dict) -> dict[str, Any]:
    # Imported here: they bring in JAX, which a comparison whose runs are all cached never starts.
    from experiments.downstream.finetune import finetune, hmm_pair_task
    from experiments.downstream.minimal_pairs import hmm_minimal_pairs, hmm_unigram_accuracy
    from experiments.downstream.probes import hmm_state_probe
    from models.scoring import minimal_pair_accuracy
    from train.inference.load import load_run
    from train.objectives import CausalLM

    t0 = time.perf_counter()
    sizes = EVALS[preset]
    run = load_run(workdir)
    config, model, mask_kind, source = run.config, run.trained.model, run.trained.mask_kind, run.source
    lines = runs.metrics_lines(workdir)
    flops_per_step = step_flops(config, run.objective, run.params, source.vocab_size)
    out: dict[str, Any] = {
        "objective": objective,
        "seed": seed,
        **runs.collect(workdir),
        "tokens_seen": config.num_train_steps * config.batch_size * config.seq_len,
        "tokens_predicted": _tokens_predicted(lines),
        "flops_per_step": flops_per_step,
        "train_flops": config.num_train_steps * flops_per_step,
        "curve": [
            {"step": x["step"], "loss": x["loss"], "captured": x.get("captured")}
            for x in lines
            if x["split"] == "eval"
        ],
    }

    def view(objective_obj: Any, kind: str, name: str) -> None:
        ev = run.evaluate(objective_obj, kind, eval_form=False)
        out.update({f"{name}_loss": ev["loss"], f"{name}_captured": ev.get("captured")})

    if objective != "mlm":  # next-token prediction at every position, causal attention
        view(CausalLM(), "causal", "next_token")
    if objective == "mlm":
        out.update(masked_loss=out["eval_loss"], masked_captured=out["eval_captured"])
    if objective == "hybrid":
        view(run.objective.masked_view(), "prefix", "masked")

    hmm = source.hmm
    probe = hmm_state_probe(
        model,
        mask_kind,
        hmm,
        num_train=sizes["probe_train"],
        num_eval=sizes["probe_eval"],
        seq_len=EVAL_SEQ_LEN,
        seed=0,
    )
    out["probe_by_layer"] = {str(k): v for k, v in probe["accuracy"].items()}
    out["probe_best"] = max(probe["accuracy"].values())
    out.update({f"probe_{k}": probe[k] for k in ("filtering", "smoothing", "token_only", "majority")})

    if "pairs" not in cache:
        good, bad, oracle = hmm_minimal_pairs(hmm, num_pairs=sizes["pairs"], seq_len=EVAL_SEQ_LEN, seed=0)
        cache["pairs"] = (good, bad, oracle, hmm_unigram_accuracy(hmm, good, bad))
    good, bad, oracle, unigram = cache["pairs"]
    out.update(
        pairs_accuracy=minimal_pair_accuracy(
            model, mask_kind, good, bad, mask_id=run.source.specials.mask, special_ids=run.source.specials.ids
        ),
        pairs_oracle=oracle,
        pairs_unigram=unigram,
    )

    if "pair_task" not in cache:
        cache["pair_task"] = hmm_pair_task(
            hmm.spec,
            num_train=sizes["finetune_train"],
            num_eval=sizes["finetune_eval"],
            seq_len=EVAL_SEQ_LEN,
            seed=0,
        )
    train, eval_, bayes = cache["pair_task"]
    ft = finetune(model, mask_kind, train, eval_, num_classes=2, steps=sizes["finetune_steps"], seed=seed)
    out.update(finetune_accuracy=ft["accuracy"], finetune_bayes=bayes, finetune_pooling=ft["pooling"])
    out["eval_seconds"] = time.perf_counter() - t0
    return out
