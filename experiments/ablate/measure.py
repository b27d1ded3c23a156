"""In-process measurements for tables that need more than a training run.

- `init_attention_stats`: at initialisation, the attention entropy and max probability (claim
  C5: without the 1/sqrt(d_k) scale the softmax saturates as d_k grows) and the gradient norm
  of the query and key kernels.
- `step_timing`: seconds per train step and tokens/s over sequence lengths (claim C1: the
  Transformer trains all positions at once; the LSTM steps through them).
- `eval_at_15`: a trained masked LM scored at the standard 15% masking rate, whatever rate it
  was trained with, so the rows of the masking-rate table share one yardstick.
- `seq2seq_by_length`: a trained seq2seq model's token accuracy and exact match on the eval
  sources of each length (claim C11).
- `attention_kinds`: a trained encoder-decoder's three kinds of attention weights on one eval
  example (claim C10), averaged over heads, per layer.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.masks import make_attention_mask, make_cross_mask
from train.devices.mesh import to_global
from train.inference.load import load_run
from train.loop import step as step_lib
from train.loop.build import build_run


def init_attention_stats(config: Any, workdir: str) -> dict[str, float]:
    run = build_run(config, workdir)
    model, objective = run.model(), run.objective
    batch = objective.transform(next(run.source.train_iterator()), jax.random.PRNGKey(0))
    mask = make_attention_mask(config.mask, batch["segment_ids"])
    maps = model.attention_maps(batch["inputs"], mask, batch["positions"])
    probs = jnp.stack(maps)  # [layers, B, N, L, L]
    entropy = -(probs * jnp.log(jnp.where(probs > 0, probs, 1.0))).sum(-1)
    graphdef, params, rest = step_lib.split_model(model)

    def loss(params):
        s = objective.scores(nnx.merge(graphdef, params, rest), batch, config.mask)
        return s["nll_sum"] / s["weight_sum"]

    grads = jax.grad(loss)(params)
    layers = range(run.model_config.num_layers)
    qk = [grads["blocks"][i]["attn"][p]["kernel"] for i in layers for p in ("query", "key")]
    return {
        "init_entropy": float(entropy.mean()),
        "init_max_prob": float(probs.max(-1).mean()),
        "init_qk_grad_norm": float(jnp.sqrt(sum(jnp.sum(g**2) for g in qk))),
    }


def step_timing(config: Any, workdir: str, repeats: int = 5) -> dict[str, float]:
    """Median wall time of a compiled train step, after two warm-up steps."""
    run = build_run(config, workdir)
    state, step = run.init_state(), run.train_step
    batch = to_global(next(run.source.train_iterator()), run.data_sharding)
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "step_seconds": median,
        "tokens_per_sec": config.batch_size * config.seq_len / median,
        "compile_seconds": compile_s,
        "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params))),
    }


def eval_at_15(config: Any, workdir: str) -> dict[str, float]:
    """The trained run's eval loss and `captured` with 15% of tokens masked (all [MASK])."""
    loaded = load_run(workdir, config)
    result = loaded.evaluate(dataclasses.replace(loaded.objective, rate=0.15))
    return {"eval15_loss": result["loss"], "eval15_captured": result["captured"]}


def seq2seq_by_length(config: Any, workdir: str) -> dict[str, float]:
    """Per eval length n: `len{n}_token_acc` (teacher-forced argmax accuracy over the target and
    EOS) and `len{n}_exact` (rows whose every target is right: what greedy decoding gets right)."""
    run = load_run(workdir, config)
    objective, params, rest = run.objective, run.params, run.model_state
    eval_step = jax.jit(step_lib.make_eval_step(run.graphdef, objective, config.mask))
    out = {}
    for n, batches in run.source.eval_batches_by_length().items():
        totals: dict[str, float] = {}
        for batch in batches:
            sums = jax.device_get(eval_step(params, rest, objective.transform(batch)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        out[f"len{n}_token_acc"] = totals["correct_sum"] / totals["weight_sum"]
        out[f"len{n}_exact"] = totals["exact_sum"] / totals["rows_sum"]
    return out


def attention_kinds(config: Any, workdir: str, length: int = 16) -> dict[str, Any]:
    """Encoder self-, decoder self- and cross-attention of every layer on the first eval source of
    `length` (or the shortest eval length above it), averaged over heads; plus that example's tokens."""
    run = load_run(workdir, config)
    model, source, objective = run.trained.model, run.source, run.objective
    lengths = sorted(source.eval_lengths)
    n = next((m for m in lengths if m >= length), lengths[-1])
    ex = {k: v[:1] for k, v in source.eval_examples_by_length()[n].items()}
    b = objective.transform(ex)
    src_mask = make_attention_mask("bidirectional", b["src_segment_ids"])
    mask = make_attention_mask(config.mask, b["segment_ids"])
    cross = make_cross_mask(b["segment_ids"], b["src_segment_ids"])
    maps = model.attention_maps(
        b["src_tokens"], src_mask, b["src_positions"], b["inputs"], mask, b["positions"], cross
    )
    S, T = n, n + 2  # the real source; the decoder reads BOS, y_1 .. y_n, EOS
    crop = {"encoder": (S, S), "decoder": (T, T), "cross": (T, S)}
    return {
        "length": n,
        "src_tokens": ex["src_tokens"][0, :S].tolist(),
        "tgt_tokens": ex["tokens"][0, :T].tolist(),
        "maps": {
            kind: [np.asarray(m[0].mean(0))[: crop[kind][0], : crop[kind][1]].tolist() for m in layer_maps]
            for kind, layer_maps in maps.items()
        },
    }
