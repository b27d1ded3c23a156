"""What `python -m experiments.bench` measures: a config's train step as the trainer builds it,
or generation with the KV cache against recomputing the prefix (see __main__.py)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.bench.aot import hlo, hlo_cost
from experiments.bench.hf_baseline import make_hf_runner
from experiments.bench.matmul_floor import matmul_floor, step_dots, time_dots
from experiments.bench.peak import timed
from models import registry
from models.decode import SamplingConfig, generate
from models.masks import make_attention_mask
from train.devices.memory import step_memory
from train.devices.mesh import to_global
from train.loop.build import build_run
from train.observe.flops import device_peak, step_flops
from train.tokenizer.vocab import BOS_ID, NUM_SPECIAL


def random_batch(config: Any, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of uniform random tokens after BOS, one document each: the pipeline stays out of it."""
    rng = np.random.default_rng(seed)
    B, L = config.batch_size, config.seq_len
    tokens = rng.integers(NUM_SPECIAL, vocab_size, (B, L)).astype(np.int32)
    tokens[:, 0] = BOS_ID
    return {
        "tokens": tokens,
        "segment_ids": np.ones((B, L), np.int32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
    }


def train_benchmark(
    config: Any, vocab_size: int, steps: int, baseline: str = "", with_matmul_floor: bool = False
) -> dict[str, Any]:
    """Speed, FLOPs, MFU and memory of the train step (and of the HF baseline with `baseline="hf"`);
    `with_matmul_floor`: also each step's matmul floor (experiments/bench/matmul_floor.py)."""
    run = build_run(config, "/tmp/benchmark_unused", vocab_size=vocab_size)
    mesh, objective, state = run.mesh, run.objective, run.init_state()
    data_sharding = run.data_sharding
    step = run.train_step
    host_batch = random_batch(config, vocab_size)
    batch = to_global(host_batch, data_sharding)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - t0
    hf = make_hf_runner(config, vocab_size, host_batch) if baseline == "hf" else None
    for _ in range(2):
        state, metrics = compiled(state, batch)
        if hf:
            hf.run()
    jax.block_until_ready(metrics)
    # Interleaved, so both see the same machine conditions (thermal state, other load).
    times, hf_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        if hf:
            hf_times.append(timed(hf.run))
    median = statistics.median(times)
    L = config.seq_len
    flops = step_flops(config, objective, state.params, vocab_size)
    flops_causal = step_flops(config, objective, state.params, vocab_size, causal_attention_halved=True)
    peak, peak_source = device_peak(config.peak_flops_per_device)
    tokens = config.batch_size * L
    extra = baseline_figures(hf, hf_times, median, tokens, flops / peak) if hf else {}
    if with_matmul_floor:  # after the steps, so they ran on a machine in the same state
        hf_median = statistics.median(hf_times) if hf else 0.0
        ours, hf_floor = floor_figures(step_dots(step, state, batch), median, hf, hf_median)
        extra.update(ours)
        if hf_floor:
            extra["baseline"]["matmul_floor"] = hf_floor
    return {
        "objective": config.objective,
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "batch_size": config.batch_size,
        "seq_len": L,
        "vocab_size": vocab_size,
        "dtype": config.model.dtype,
        "remat": config.model.remat,
        "attention_impl": run.model_config.attention_impl,
        "loss_impl": getattr(run.model_config, "loss_impl", "full"),
        "scan_layers": config.model.scan_layers,
        "num_layers": config.model.num_layers,
        "tokens_per_sec": tokens / median,
        "predicted_tokens_per_sec": float(metrics["predicted_tokens"]) / median,
        "step_seconds_median": median,
        "step_seconds_min": min(times),
        "step_seconds_max": max(times),
        "step_seconds_iqr": float(np.subtract(*np.percentile(times, [75, 25]))),
        "timed_steps": steps,
        "compile_seconds": compile_seconds,
        "flops_per_step": flops,
        "flops_per_step_causal_halved": flops_causal,
        "model_flops_per_sec": flops / median,
        "peak_flops_per_sec": peak,
        "peak_source": peak_source,
        "mfu": flops / median / peak,
        "mfu_causal_halved": flops_causal / median / peak,
        "step_memory": step_memory(compiled),
        **xla_cost(compiled),
        **kernel_cost(compiled),
        **extra,
    }


def baseline_figures(
    hf: Any, hf_times: list[float], median: float, tokens: int, flops_over_peak: float
) -> dict:
    """The Hugging Face baseline's figures, and our speed over its (`median`: our step time)."""
    hf_median = statistics.median(hf_times)
    return {
        "baseline": {
            "model": hf.name,
            "params": hf.num_params,
            "tokens_per_sec": tokens / hf_median,
            "step_seconds_median": hf_median,
            "step_seconds_iqr": float(np.subtract(*np.percentile(hf_times, [75, 25]))),
            "compile_seconds": hf.compile_seconds,
            "mfu": flops_over_peak / hf_median,
        },
        "speedup_vs_baseline": hf_median / median,
    }


def beside(floor: dict[str, Any], step_seconds: float) -> dict[str, Any]:
    """A matmul floor with the share of its step it is and the step's time beyond it (other
    ops, and matmuls slower than alone)."""
    beyond = step_seconds - floor["seconds"]
    return {**floor, "fraction_of_step": floor["seconds"] / step_seconds, "seconds_beyond": beyond}


def floor_figures(dots: Counter, median: float, hf: Any, hf_median: float) -> tuple[dict, dict | None]:
    """(the matmul floor of our step, its `dots` at `median` seconds a step, with the most it
    could be ahead of HF's without matmuls faster than XLA runs each alone; HF's floor, or None
    without the baseline)."""
    if hf is None:
        return {"matmul_floor": beside(matmul_floor(dots), median)}, None
    hf_dots = step_dots(hf.traceable, hf.params, hf.opt_state, hf.batch)
    seconds = time_dots([*dots, *hf_dots])  # together: a dot both steps run is charged alike
    ours = beside(matmul_floor(dots, seconds), median)
    return (
        {"matmul_floor": ours, "speedup_vs_baseline_bound": hf_median / ours["seconds"]},
        beside(matmul_floor(hf_dots, seconds), hf_median),
    )


def xla_cost(compiled: Any) -> dict[str, float]:
    """XLA's FLOPs and bytes accessed per device for one step (its cost analysis), where the
    backend gives them: what a roofline estimate of the step is made of."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if not cost or "flops" not in cost:
        return {}
    return {
        "xla_flops_per_device": float(cost["flops"]),
        "xla_bytes_per_device": float(cost.get("bytes accessed", 0)),
    }


def kernel_cost(compiled: Any) -> dict[str, float]:
    """The fused attention kernels the step runs, counted by their formula, the loop iterations
    past the first and the program's own estimate of its bytes (experiments/bench/aot/hlo_cost.py):
    what XLA's cost analysis leaves out (the kernels, the repeats) or does not give (a GPU)."""
    module = hlo.parse(compiled.as_text())
    kernels, repeats = hlo_cost.kernel_count(module), hlo_cost.loop_repeats(module)
    return {
        "loop_repeat_flops_per_device": repeats.flops,
        "loop_repeat_bytes_per_device": repeats.bytes,
        "kernel_calls": kernels.calls,
        "kernel_flops_per_device": kernels.flops,
        "kernel_bytes_per_device": kernels.bytes,
        "hlo_bytes_per_device": hlo_cost.io_bytes(module) + kernels.bytes,
    }


def decode_benchmark(
    config: Any, vocab_size: int, new_tokens: int, batch: int = 8, prompt_len: int = 8
) -> dict[str, Any]:
    """New tokens/s of greedy generation with the KV cache and by recomputing the prefix."""
    model = registry.make_model(registry.model_config(config, vocab_size), nnx.Rngs(0))
    model.eval()
    prompts = random_batch(config, vocab_size)["tokens"][:batch, :prompt_len].tolist()
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)

    def cached():
        return generate(model, prompts, sampling, jax.random.PRNGKey(0)).tokens

    total = prompt_len + new_tokens
    graphdef, state = nnx.split(model)

    @jax.jit
    def recompute(state, prompt_BP):
        # The whole sequence so far through the full model at every step: O(steps x length).
        m = nnx.merge(graphdef, state)
        tokens_BT = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt_BP)
        positions_BT = jnp.broadcast_to(jnp.arange(total), (batch, total))
        mask = make_attention_mask("causal", jnp.ones((batch, total), jnp.int32))

        def body(t, tokens_BT):
            logits_BTV = m(tokens_BT, mask, positions_BT)
            next_B = jnp.argmax(logits_BTV[:, t - 1], -1).astype(jnp.int32)
            return tokens_BT.at[:, t].set(next_B)

        return jax.lax.fori_loop(prompt_len, total, body, tokens_BT)

    prompt_arr = jnp.asarray(prompts, jnp.int32)
    t_compile = time.perf_counter()
    reference = np.asarray(recompute(state, prompt_arr))[:, prompt_len:]
    first = cached()
    compile_seconds = time.perf_counter() - t_compile
    cached_s = min(timed(cached) for _ in range(3))
    recompute_s = min(timed(lambda: recompute(state, prompt_arr).block_until_ready()) for _ in range(3))
    return {
        "decode_new_tokens": new_tokens,
        "batch": batch,
        "prompt_len": prompt_len,
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "kv_cache_tokens_per_sec": batch * new_tokens / cached_s,
        "recompute_tokens_per_sec": batch * new_tokens / recompute_s,
        "speedup": recompute_s / cached_s,
        "same_tokens": bool((np.asarray(first) == reference).all()),
        "compile_seconds": compile_seconds,
        "platform": jax.devices()[0].platform,
    }
