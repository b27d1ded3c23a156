"""A config's real train step compiled ahead of time for a TPU slice or GPUs, on a CPU host.

    python -m experiments.bench.aot --config configs/gpt.py:gpt2 --config.model.dtype=bfloat16 \
        --topology v5e:2x2 --vocab_size 50257 --per_device_batch 8
    python -m experiments.bench.aot --config configs/gpt.py:gpt2 --config.model.dtype=bfloat16 \
        --topology h100 --vocab_size 50257 --search
    python -m experiments.bench.aot --config configs/bert.py:bert_base --config.model.dtype=bfloat16 \
        --topology v5e:4x4 --config.mesh.fsdp=16 --vocab_size 30522 --search

libtpu and the CUDA plugin (both installed with the test extra) describe a target without one
(experiments/bench/aot/targets.py: `v4:2x2x1`, `v5e:2x2`, `v5p:2x2x1`, `v6e:4x4`, a slice of
several hosts too; `h100`, `h100:8`, `h200`, `a100`) and compile for it. The step is `build_run`'s,
with the mesh over the target's compile-only devices: the shardings, donation, remat, dtype and
the attention and loss a run there would compile ("auto": the fused kernels, the chunked loss).
A line on stderr says of each compile whether it fits and of how much; one JSON line reports the
compile time; the memory one device needs (arguments, temporaries, peak) against its limit (the
TPU compiler's; on a GPU JAX's default 75% of the HBM); the FLOPs and bytes per device (XLA's
where the compiler counts them, the fused kernels by their formula, the program's own byte
estimate: experiments/bench/aot/hlo_cost.py) beside the model FLOPs that MFU counts
(train/observe/flops.py); a roofline step time (FLOPs at the chip's bf16 peak, bytes at its HBM
bandwidth, whichever takes longer; collectives are not counted) and the MFU it bounds.
`--search` also finds the largest per-device batch that fits: two compiles fit memory as a line
in the batch, the batch the line predicts is compiled, and the search steps from there until it
holds one batch that fits and the next that does not; `--search_from N` (a batch expected near
the answer) compiles N second and steps 1, 2, 4, ... rows away from it instead
(experiments/bench/aot/batch_search.py). `--top_ops N` adds the N ops that move the most bytes,
each with the JAX operation it came from: where the bytes go.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from experiments.bench.aot.measure import measure
from models.errors import ConfigError
from train.flag_errors import fail, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py:<variant>", lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    "topology",
    "v5e:2x2",
    "a TPU slice GENERATION:SHAPE (v4:2x2x1, v5e:4x4) or GPUs (h100, h100:8, h200, a100)",
)
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "vocabulary (0: the config's tokenizer.vocab_size)")
_BATCH = flags.DEFINE_integer(
    "per_device_batch", 0, "rows per device (0: the config's batch over the devices)"
)
_SEARCH = flags.DEFINE_bool("search", False, "also find the largest per-device batch that fits")
_TOP_OPS = flags.DEFINE_integer("top_ops", 0, "also the N ops that move the most bytes (where the bytes go)")
_SEARCH_FROM = flags.DEFINE_integer(
    "search_from", 0, "with --search: a batch expected near the answer, compiled next (0: none)"
)


def main(argv: list[str]) -> None:
    """absl's entry point: one JSON line (module docstring); bad input exits 2 in one line."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    if (_SEARCH_FROM.value and not _SEARCH.value) or _SEARCH_FROM.value < 0:
        fail("--search_from: a batch of one row or more, given with --search (0: none)")
    from train.config_checks import validate
    from train.devices.platform import libtpu_installed, skip_absent_accelerators

    skip_absent_accelerators()  # the host runs no model: only the compilers are used
    if ":" in _TOPOLOGY.value and _TOPOLOGY.value.startswith("v") and not libtpu_installed():
        fail("libtpu is not installed: pip install -e '.[test]' (or '.[tpu]') brings the TPU compiler")
    config = _CONFIG.value
    try:
        validate(config)
        print(
            json.dumps(
                measure(
                    config,
                    _TOPOLOGY.value,
                    _VOCAB.value or config.tokenizer.vocab_size,
                    _BATCH.value,
                    _SEARCH.value,
                    _SEARCH_FROM.value or None,
                    max(_TOP_OPS.value, 0),
                )
            )
        )
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
