"""Train-step and decode speed of a config: one JSON line of measurements.

    python -m experiments.benchmark --config configs/gpt.py:tiny --config.model.d_model=256 \
        --config.seq_len=256 --config.batch_size=16 --vocab_size 8192
    python -m experiments.benchmark --config configs/gpt.py:base --config.model.dtype=bfloat16 --steps 20
    python -m experiments.benchmark --config configs/gpt.py:tiny --decode 512
    python -m experiments.benchmark --config configs/bert.py:tiny --baseline hf \
        --config.model.position=learned

The step is built exactly as the trainer builds it (mesh, FSDP shardings, objective transform,
donation, remat, dtype, gradient accumulation) and fed random tokens of `--vocab_size` (default:
the dataset's), so the data pipeline is not in the measurement. Reported: tokens/s (and
predicted tokens/s for the masked LM), median step time and its spread over `--steps` timed
steps after two warm-up steps, compile seconds, model FLOPs per step counted two ways (every
attention key, and causal attention halved), MFU against a peak (on CPU a measured float32
matmul peak; on GPU/TPU the device's dense bf16 peak, from a table by device kind, or a
measured bf16 matmul where the kind is unknown), and the step's memory per device.
On CPU the process first sets glibc's malloc to reuse freed memory (train/host_memory.py:
without it XLA:CPU page-faults its whole working set in again every step); "host_malloc" says
whether it did, and `GPTBERT_HOST_MALLOC=default` measures without it.
`--baseline hf` also times Hugging Face's FlaxGPT2LMHeadModel / FlaxBertForMaskedLM at the same
shapes, batch and optimizer (experiments/hf_baseline.py), interleaved step by step with ours in
the same process, and reports its figures under "baseline" and the ratio "speedup_vs_baseline".
`--decode N` instead measures generation: new tokens/s with the KV cache vs recomputing the
whole prefix at every step, N new tokens from a batch of 8-token prompts.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py:<variant>", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps); at least 10")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "vocabulary of the random tokens (0: the dataset's)")
_DECODE = flags.DEFINE_integer("decode", 0, "measure generation of this many new tokens instead")
_BASELINE = flags.DEFINE_enum(
    "baseline", "", ["", "hf"], "also time Hugging Face's Flax GPT-2 / BERT at the same shapes, interleaved"
)

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
DEVICE_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matmul on the default device (the best of `repeats`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def device_peak() -> tuple[float, str]:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return matmul_peak(jnp.float32), "measured float32 matmul (2048^3)"
    for kind, peak in DEVICE_PEAKS.items():
        if kind.lower() in device.device_kind.lower():
            return peak * jax.device_count(), f"{device.device_kind} bf16 data sheet x {jax.device_count()}"
    return matmul_peak(jnp.bfloat16, 8192) * jax.device_count(), "measured bf16 matmul (8192^3)"


def _random_batch(config, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    from train.data.vocab import BOS_ID, NUM_SPECIAL

    rng = np.random.default_rng(seed)
    B, L = config.batch_size, config.seq_len
    tokens = rng.integers(NUM_SPECIAL, vocab_size, (B, L)).astype(np.int32)
    tokens[:, 0] = BOS_ID
    return {
        "tokens": tokens,
        "segment_ids": np.ones((B, L), np.int32),
        "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
    }


def train_benchmark(config, vocab_size: int, steps: int, baseline: str = "") -> dict:
    from train.flops import non_embedding_params, train_flops_per_step
    from train.device_memory import step_memory
    from train.mesh import to_global
    from train.objectives import MaskedLM
    from train.setup import build_run

    run = build_run(config, "/tmp/benchmark_unused", vocab_size=vocab_size)
    mesh, objective, state = run.mesh, run.objective, run.init_state()
    data_sharding = run.data_sharding
    step = run.train_step
    host_batch = _random_batch(config, vocab_size)
    batch = to_global(host_batch, data_sharding)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - t0
    hf = None
    if baseline == "hf":
        from experiments.hf_baseline import make_hf_runner

        hf = make_hf_runner(config, vocab_size, host_batch)
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
            hf_times.append(_timed(hf.run))
    median = statistics.median(times)
    L = config.seq_len
    head = objective.max_predictions(L) if isinstance(objective, MaskedLM) else L
    n = non_embedding_params(state.params)
    flops = train_flops_per_step(config, n, vocab_size, head)
    flops_causal = train_flops_per_step(config, n, vocab_size, head, causal_attention_halved=True)
    peak, peak_source = device_peak()
    tokens = config.batch_size * L
    extra = {}
    if hf:
        hf_median = statistics.median(hf_times)
        extra["baseline"] = {
            "model": hf.name,
            "params": hf.num_params,
            "tokens_per_sec": tokens / hf_median,
            "step_seconds_median": hf_median,
            "step_seconds_iqr": float(np.subtract(*np.percentile(hf_times, [75, 25]))),
            "compile_seconds": hf.compile_seconds,
            "mfu": flops / hf_median / peak,
        }
        extra["speedup_vs_baseline"] = hf_median / median
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
        "attention_impl": config.model.attention_impl,
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
        **extra,
    }


def decode_benchmark(config, vocab_size: int, new_tokens: int, batch: int = 8, prompt_len: int = 8) -> dict:
    from models import registry
    from models.decode import SamplingConfig, generate
    from models.masks import make_attention_mask

    model = registry.make_model(registry.model_config(config, vocab_size), nnx.Rngs(0))
    model.eval()
    prompts = _random_batch(config, vocab_size)["tokens"][:batch, :prompt_len].tolist()
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
    cached_s = min(_timed(cached) for _ in range(3))
    recompute_s = min(_timed(lambda: recompute(state, prompt_arr).block_until_ready()) for _ in range(3))
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from train.config_checks import validate
    from train.data.sources import make_source
    from train.host_memory import retain_freed_memory

    # Both models of a --baseline run share this process, so both get it.
    host_malloc_tuned = retain_freed_memory()
    config = _CONFIG.value
    validate(config)
    if _STEPS.value < 10:
        raise app.UsageError("--steps must be at least 10")
    vocab_size = _VOCAB.value or make_source(config, "/tmp/benchmark_unused").vocab_size
    if _DECODE.value:
        if config.mask != "causal":
            raise app.UsageError("--decode measures generation: use a causal config (configs/gpt.py)")
        result = decode_benchmark(config, vocab_size, _DECODE.value)
    else:
        result = train_benchmark(config, vocab_size, _STEPS.value, _BASELINE.value)
    result["host_malloc"] = "retained" if host_malloc_tuned else "default"
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
