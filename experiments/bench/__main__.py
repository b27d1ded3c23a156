"""Train-step and decode speed of a config: one JSON line of measurements.

    python -m experiments.bench --config configs/gpt.py:tiny --config.model.d_model=256 \
        --config.seq_len=256 --config.batch_size=16 --vocab_size 8192
    python -m experiments.bench --config configs/gpt.py:base --config.model.dtype=bfloat16 --steps 20
    python -m experiments.bench --config configs/gpt.py:tiny --decode 512
    python -m experiments.bench --config configs/bert.py:tiny --baseline hf \
        --config.model.position=learned

The step is built exactly as the trainer builds it (mesh, FSDP shardings, objective transform,
donation, remat, dtype, gradient accumulation) and fed random tokens of `--vocab_size` (default:
the dataset's), so the data pipeline is not in the measurement. Reported: tokens/s (and
predicted tokens/s for the masked LM), median step time and its spread over `--steps` timed
steps after two warm-up steps, compile seconds, model FLOPs per step counted two ways (every
attention key, and causal attention halved), MFU against a peak (train/observe/flops.py: on CPU
a measured float32 matmul peak; on GPU/TPU the device's dense bf16 peak, from a table by device
kind, or a measured bf16 matmul where the kind is unknown), and the step's memory per device.
On CPU the process first sets glibc's malloc to reuse freed memory (train/devices/host_memory.py:
without it XLA:CPU page-faults its whole working set in again every step); "host_malloc" says
whether it did, and `GPTBERT_HOST_MALLOC=default` measures without it.
`--baseline hf` also times Hugging Face's FlaxGPT2LMHeadModel / FlaxBertForMaskedLM at the same
shapes, batch and optimizer (experiments/bench/hf_baseline.py), interleaved step by step with ours in
the same process, and reports its figures under "baseline" and the ratio "speedup_vs_baseline".
`--matmul_floor` also times every matmul of each step alone (experiments/bench/matmul_floor.py):
"matmul_floor" (and "baseline"."matmul_floor") is the sum, per distinct matmul its count and
GFLOP/s; with the baseline, "speedup_vs_baseline_bound" = HF's step time / our floor, the most
our step can be ahead of HF's without running matmuls faster than XLA runs each alone.
`--decode N` instead measures generation: new tokens/s with the KV cache vs recomputing the
whole prefix at every step, N new tokens from a batch of 8-token prompts.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from experiments.bench.speed import decode_benchmark, train_benchmark

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py:<variant>", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps); at least 10")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "vocabulary of the random tokens (0: the dataset's)")
_DECODE = flags.DEFINE_integer("decode", 0, "measure generation of this many new tokens instead")
_BASELINE = flags.DEFINE_enum(
    "baseline", "", ["", "hf"], "also time Hugging Face's Flax GPT-2 / BERT at the same shapes, interleaved"
)
_FLOOR = flags.DEFINE_bool(
    "matmul_floor", False, "also time every matmul of the step alone (experiments/bench/matmul_floor.py)"
)


def main(argv: list[str]) -> None:
    """absl's entry point: one JSON line of the train-step (or, with --decode, generation) figures."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from train.config_checks import validate
    from train.data.sources import make_source
    from train.devices.startup import before_jax_starts

    # Both models of a --baseline run share this process, so both get it.
    host_malloc_tuned = before_jax_starts()
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
        result = train_benchmark(config, vocab_size, _STEPS.value, _BASELINE.value, _FLOOR.value)
    result["host_malloc"] = "retained" if host_malloc_tuned else "default"
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
