"""The objectives compared: GPT, BERT, prefix LM and the hybrid, same block, data and compute.

    python -m experiments.compare --preset cpu --seeds 3 --out experiments/results
    python -m experiments.compare --preset gpu --seeds 3 --out /results

Every (objective, seed) trains as an independent `python -m train.main` run in
`OUT/runs/compare/OBJECTIVE/seedN` with the same model, batch, sequence length and steps, so
parameters and tokens seen are equal; compute differs only by the vocabulary projection, which
the masked LM pays on its ~15% scored positions alone (FLOPs are reported). Each finished run is
then evaluated in this process, from its checkpoint (`train.inference.load_trained`), and the
result cached in the run's folder as `compare_eval.json`, so an interrupted comparison resumes:
- its own eval loss against the exact optimum (`captured`), plus the next-token view (every
  position, causal) and the masked-token view where the model has one;
- a linear probe for the hidden HMM state at every layer, against the exact filtering
  (left context) and smoothing (both sides) ceilings;
- minimal-pair accuracy (HMM pairs, one token made improbable), against the HMM's own
  accuracy and the unigram floor; log-likelihood for next-token models, pseudo-log-likelihood
  for BERT;
- fine-tuning all weights to tell two HMMs apart, against the Bayes-optimal accuracy.
Writes OUT/compare.md, OUT/compare.csv and OUT/compare.png (experiments/compare_report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from experiments import compare_report, runs
from experiments.ablate import _parse_set
from train.flops import non_embedding_params, train_flops_per_step
from train.host_memory import retain_freed_memory

OBJECTIVES: tuple[str, ...] = ("clm", "mlm", "prefix_lm", "hybrid")
NAMES = {"clm": "GPT", "mlm": "BERT", "prefix_lm": "prefix LM", "hybrid": "GPT-BERT hybrid"}

# Config overrides of every run, on top of configs/<objective>.py:tiny.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model.num_layers": 2,
        "model.d_model": 64,
        "model.num_heads": 4,
        "model.mlp_dim": 256,
        "seq_len": 128,
        "batch_size": 32,
        "num_train_steps": 600,
        "optim.warmup_steps": 60,
        "log_every_steps": 50,
        "eval_every_steps": 100,
        "checkpoint_every_steps": 300,
    },
    "gpu": {
        "model.num_layers": 6,
        "model.d_model": 512,
        "model.num_heads": 8,
        "model.mlp_dim": 2048,
        "seq_len": 128,
        "batch_size": 128,
        "num_train_steps": 5000,
        "optim.warmup_steps": 250,
        "optim.learning_rate": 1e-3,
        "log_every_steps": 100,
        "eval_every_steps": 250,
        "checkpoint_every_steps": 500,
    },
}
# Sizes of the downstream evaluations. Rows are 64 tokens (BOS + 63 symbols).
EVALS: dict[str, dict[str, int]] = {
    "cpu": dict(probe_train=512, probe_eval=256, pairs=200, finetune_train=4096, finetune_steps=300),
    "gpu": dict(probe_train=2048, probe_eval=1024, pairs=1000, finetune_train=16384, finetune_steps=1000),
}
EVAL_SEQ_LEN = 64


def _tokens_predicted(lines: list[dict[str, Any]]) -> float:
    total, previous = 0.0, 0
    for line in (x for x in lines if x["split"] == "train"):
        total += line["predicted_tokens"] * (line["step"] - previous)  # per-step mean x steps
        previous = line["step"]
    return total


def evaluate_run(workdir: str, objective: str, preset: str, seed: int, cache: dict) -> dict[str, Any]:
    """Every measurement of one trained run (cached in `workdir/compare_eval.json`)."""
    path = os.path.join(workdir, "compare_eval.json")
    if os.path.exists(path):
        return json.load(open(path))
    from experiments.downstream.finetune import finetune, hmm_pair_task
    from experiments.downstream.minimal_pairs import hmm_minimal_pairs, hmm_unigram_accuracy
    from experiments.downstream.probes import hmm_state_probe
    from experiments.downstream.scoring import minimal_pair_accuracy
    from train.inference import load_run
    from train.objectives import CausalLM, MaskedLM

    t0 = time.perf_counter()
    sizes = EVALS[preset]
    run = load_run(workdir)
    config, model, mask_kind, source = run.config, run.trained.model, run.trained.mask_kind, run.source
    lines = runs.metrics_lines(workdir)
    non_embedding = non_embedding_params(run.params)
    train_objective = run.objective
    head_positions = (
        train_objective.max_predictions(config.seq_len)
        if isinstance(train_objective, MaskedLM)
        else config.seq_len
    )
    flops_per_step = train_flops_per_step(config, non_embedding, source.vocab_size, head_positions)
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

    def view(objective_obj, kind: str, name: str) -> None:
        ev = run.evaluate(objective_obj, kind, eval_form=False)
        out.update({f"{name}_loss": ev["loss"], f"{name}_captured": ev.get("captured")})

    if objective != "mlm":  # next-token prediction at every position, causal attention
        view(CausalLM(), "causal", "next_token")
    if objective == "mlm":
        out.update(masked_loss=out["eval_loss"], masked_captured=out["eval_captured"])
    if objective == "hybrid":
        view(train_objective.masked_view(), "prefix", "masked")

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
        pairs_accuracy=minimal_pair_accuracy(model, mask_kind, good, bad),
        pairs_oracle=oracle,
        pairs_unigram=unigram,
    )

    if "pair_task" not in cache:
        cache["pair_task"] = hmm_pair_task(
            hmm.spec, num_train=sizes["finetune_train"], num_eval=1024, seq_len=EVAL_SEQ_LEN, seed=0
        )
    train, eval_, bayes = cache["pair_task"]
    ft = finetune(model, mask_kind, train, eval_, num_classes=2, steps=sizes["finetune_steps"], seed=seed)
    out.update(finetune_accuracy=ft["accuracy"], finetune_bayes=bayes, finetune_pooling=ft["pooling"])
    out["eval_seconds"] = time.perf_counter() - t0

    with open(f"{path}.tmp", "w") as f:
        json.dump(out, f)
    os.replace(f"{path}.tmp", path)
    return out


def run_comparison(
    preset: str, seeds: int, out: str, sets: dict[str, Any], command: str, objectives=OBJECTIVES
) -> str:
    overrides_base = {**PRESETS[preset], **sets}
    if overrides_base.get("dataset", "hmm") != "hmm":
        raise SystemExit(
            "experiments.compare evaluates probes, minimal pairs and fine-tuning against the exact "
            "HMM ceilings, so it needs dataset=hmm; train on text with train.main and load the "
            "runs with train.inference.load_trained"
        )
    results, cache = [], {}
    for objective in objectives:
        for seed in range(seeds):
            overrides = {**overrides_base, "seed": seed}
            workdir = os.path.join(out, "runs", "compare", objective, f"seed{seed}")
            if not runs.finished(workdir, overrides["num_train_steps"]):
                runs.train(workdir, objective, overrides)
            result = evaluate_run(workdir, objective, preset, seed, cache)
            results.append(result)
            print(
                f"[compare] {objective} seed {seed}: eval loss {result['eval_loss']:.4f}, probe "
                f"{result['probe_best']:.3f}, pairs {result['pairs_accuracy']:.3f}, fine-tune "
                f"{result['finetune_accuracy']:.3f}",
                flush=True,
            )
    return compare_report.write(results, preset, seeds, out, command, overrides_base)


def main(argv: list[str] | None = None) -> None:
    retain_freed_memory()  # before JAX starts its CPU client (train/host_memory.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument(
        "--objectives", default=",".join(OBJECTIVES), help=f"comma-separated subset of {OBJECTIVES}"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run")
    args = parser.parse_args(argv)
    objectives = tuple(o for o in args.objectives.split(",") if o)
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        parser.error(f"--objectives: {sorted(unknown)} not in {OBJECTIVES}")
    command = "python -m experiments.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    print(run_comparison(args.preset, args.seeds, args.out, _parse_set(args.set), command, objectives))


if __name__ == "__main__":
    main()
