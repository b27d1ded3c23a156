"""Defaults shared by every experiment: trainer, optimizer, data, mesh, and the model sizes.

`configs/gpt.py` and `configs/bert.py` start from `get_config()` here and set only the
objective and the attention mask, so GPT and BERT runs of one variant differ in nothing else.
The sections only one objective reads are added by its file (`hybrid` by configs/hybrid.py,
`seq2seq` by configs/seq2seq.py).
"""

from __future__ import annotations

import ml_collections

from configs.sizes import SIZES


# Each variant is shaped like the config tree and applied by `override`, as a command line's
# `--config.key=value` would be; its model shape comes from configs/sizes.py. `tiny` trains to
# near the HMM optimum on a 2-core CPU in minutes; `small` is a single-accelerator size; `base`
# has the GPT-2 124M / BERT-base 110M block shapes.
def _variant(size: str, length: int, batch: int, steps: int, lr: float, warmup: int):
    return dict(
        model=dict(**SIZES[size].fields(), max_len=length),
        optim=dict(learning_rate=lr, warmup_steps=warmup),
        seq_len=length,
        batch_size=batch,
        num_train_steps=steps,
        eval_every_steps=max(250, steps // 20),
        checkpoint_every_steps=max(250, steps // 20),
    )


def override_dict(variant: dict, **sections: dict) -> dict:
    """`variant` with some of its sections' fields replaced."""
    return {**variant, **{k: {**variant.get(k, {}), **v} for k, v in sections.items()}}


VARIANTS: dict[str, dict] = {
    "tiny": _variant("tiny", length=128, batch=32, steps=1500, lr=3e-3, warmup=100),
    "small": _variant("small", length=512, batch=64, steps=20_000, lr=1e-3, warmup=1000),
    "base": _variant("base", length=1024, batch=256, steps=100_000, lr=6e-4, warmup=2000),
}
# Architecture presets: every option that makes the block exactly GPT-2 or BERT (vocab 50257 /
# 30522 come with their tokenizers), so that their Hugging Face weights map one to one
# (train/hf/weights.py) and a run exports to a Hugging Face directory. `gpt2` and `bert_base` have
# the shapes of `base` (GPT-2 124M, BERT-base); `gpt2_tiny` and `bert_tiny` the shapes and schedule
# of `tiny`, to try an export on a CPU. Each trains with either objective; a causal run exports as
# GPT-2 and a bidirectional one as BERT.
_EXACT = dict(position="learned", norm="layernorm", attn_scale="sqrt")
GPT2_OPTIONS = dict(
    **_EXACT, norm_position="pre", norm_eps=1e-5, activation="gelu_tanh", embed_norm=False, head="tied"
)
BERT_OPTIONS = dict(
    **_EXACT, norm_position="post", norm_eps=1e-12, activation="gelu", embed_norm=True, head="bert"
)
VARIANTS["gpt2"] = override_dict(VARIANTS["base"], model=GPT2_OPTIONS)
VARIANTS["bert_base"] = override_dict(
    _variant("base", length=512, batch=256, steps=100_000, lr=1e-4, warmup=10_000), model=BERT_OPTIONS
)
VARIANTS["gpt2_tiny"] = override_dict(VARIANTS["tiny"], model=GPT2_OPTIONS)
VARIANTS["bert_tiny"] = override_dict(VARIANTS["tiny"], model=BERT_OPTIONS)


def get_config() -> ml_collections.ConfigDict:
    """Every field a run reads, at its default; the sections' meanings are in docs/running.md."""
    c = ml_collections.ConfigDict()
    for section in (_run, _data, _model, _optimizer, _training, _observability):
        section(c)
    return c


def _run(c: ml_collections.ConfigDict) -> None:
    """Seed, objective and attention mask (the two fields GPT and BERT differ in)."""
    c.seed = 0
    # "clm" (GPT), "mlm" (BERT), "prefix_lm", "hybrid" or "seq2seq" (train/objectives/)
    c.objective = "clm"
    c.mask = "causal"  # "causal", "bidirectional" or "prefix" (models/masks.py)

    c.dataset = "hmm"
    c.seq_len = 128
    c.batch_size = 32  # global, over all devices and processes


def _data(c: ml_collections.ConfigDict) -> None:
    """The dataset, its batch shape, the tokenizer and the data cache."""
    c.hmm = ml_collections.ConfigDict(
        dict(
            num_states=32,
            num_symbols=128,
            transition_support=4,
            emission_support=8,
            concentration=0.5,
            seed=0,
            eval_sequences=512,
        )
    )
    # Real text (dataset "text:GLOB" or "tfds:NAME[/CONFIG]"), see train/data/pipeline.py.
    c.text = ml_collections.ConfigDict(dict(split_by="file", eval_fraction=0.05))
    c.tfds = ml_collections.ConfigDict(
        dict(data_dir="", train_split="train", eval_split="validation", text_feature="text", download=False)
    )
    # BPE by default: its tokenizer.json (an export's) encodes every text exactly as the run did;
    # a unigram model's agrees except where two segmentations score the same (spm_to_hf.py).
    c.tokenizer = ml_collections.ConfigDict(
        dict(path="", vocab_size=8192, model_type="bpe", max_train_chars=20_000_000)
    )
    c.data_cache_dir = ""  # tokenizers and packed rows; "" means ~/.cache/gptbert
    # "hf:DIR": start (not resume) from a local Hugging Face GPT-2 / BERT directory (train/hf/reader.py)
    c.init_from = ""
    c.data_workers = 0  # processes that encode a text corpus into the cache; 0 means one per core
    # Hosts of a multi-process run that share no filesystem: each builds and reads only its part
    # of the train rows (and all eval rows); docs/data.md#the-token-cache.
    c.data_cache_per_host = False
    c.eval_max_rows = 1024  # real text: eval on the first rows of the eval split
    c.mlm = ml_collections.ConfigDict(dict(rate=0.15, mask_frac=0.8, random_frac=0.1))


def _model(c: ml_collections.ConfigDict) -> None:
    """The shared block's shape and options (models/transformer_config.py)."""
    c.model = ml_collections.ConfigDict(
        dict(
            # "transformer" or "lstm" (models/lstm.py: d_model and num_layers only) for language
            # models; "encdec", "lstm_seq2seq" or "lstm_attention" for objective "seq2seq".
            arch="transformer",
            **SIZES["tiny"].fields(),
            max_len=128,
            position="rotary",
            norm="layernorm",
            norm_position="pre",
            attn_scale="sqrt",
            # GPT-2 and BERT exactly (configs/gpt.py:gpt2, configs/bert.py:bert_base) need these.
            norm_eps=1e-6,  # LayerNorm / RMSNorm epsilon
            activation="gelu_tanh",  # or "gelu" (exact, BERT)
            embed_norm=False,  # a norm after embeddings + positions (BERT)
            head="tied",  # or "bert": dense, activation, norm, tied projection + output bias
            dtype="float32",  # compute dtype; "bfloat16" for mixed precision (params stay param_dtype)
            param_dtype="float32",
            remat="none",  # "none", "full" or "dots": recompute block activations in backward
            # "auto": written out on CPU, fused kernels on TPU ("splash") and GPU ("pallas_gpu"; both
            # interpreted on a CPU); or "xla" (jax.nn.dot_product_attention), "cudnn" (GPU, bf16/fp16
            # only), "einsum" (written out) everywhere.
            attention_impl="auto",
            # "auto": the full logits on CPU, "chunked" on TPU and GPU (loss_chunk_tokens tokens a
            # device at a time: the float32 logits of the batch never exist at once); or "full".
            loss_impl="auto",
            loss_chunk_tokens=1024,
            scan_layers=False,  # run the blocks as one lax.scan: compile time flat in depth
        )
    )


def _optimizer(c: ml_collections.ConfigDict) -> None:
    """AdamW with warmup and cosine decay (train/loop/step.py)."""
    c.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=3e-3,
            warmup_steps=100,
            min_lr_ratio=0.1,
            weight_decay=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            grad_clip_norm=1.0,
        )
    )


def _training(c: ml_collections.ConfigDict) -> None:
    """Steps, logging, evaluation, checkpoints, the non-finite guard and the mesh."""
    c.grad_accum_steps = 1  # micro-batches per step: batch_size / grad_accum_steps rows each
    c.compilation_cache_dir = ""  # persistent XLA compilation cache ("" = off)

    c.num_train_steps = 1500
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 250
    c.checkpoint_every_minutes = (
        0.0  # also checkpoint at the first log step this long after the last (0 = off)
    )
    c.keep_checkpoints = 3
    # A NaN or Inf loss or gradient norm: "stop" the run (exit status 3), or "skip" the step
    # (state unchanged) and stop after max_skipped_in_a_row in a row (train/checkpoint/nonfinite.py).
    c.nonfinite = "stop"
    c.max_skipped_in_a_row = 10
    # data x fsdp must equal the device count; data=-1 takes what fsdp leaves (train/devices/mesh.py).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))


def _observability(c: ml_collections.ConfigDict) -> None:
    """What a run shows besides its metrics (docs/observability.md)."""
    # Seeing inside a run (docs/observability.md). MFU is measured against the device's peak:
    # this figure per device if > 0, else the data sheet's dense bf16 figure for a known
    # accelerator, else a measured float32 matmul (CPU).
    c.peak_flops_per_device = 0.0
    # A jax.profiler trace of steps start_step .. start_step + num_steps - 1 into WORKDIR/profile.
    c.profile = ml_collections.ConfigDict(dict(start_step=0, num_steps=0))  # num_steps 0: off
    c.log_layer_stats = False  # per block and parameter kind: norms, gradient norms, update ratios
    c.eval_samples = 4  # prompts continued (or masks filled) at each eval, to TensorBoard text; 0: off
    # Weights & Biases (pip install -e ".[wandb]"): off while project is "".
    c.wandb = ml_collections.ConfigDict(dict(project="", entity="", mode="online"))


def apply_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    variant = variant or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return override(c, VARIANTS[variant])


def override(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Sets dotted keys (`{"model.d_model": 64}`) as `--config.model.d_model=64` would; a dict
    value for a section (`{"model": {"d_model": 64}}`) sets its fields the same way."""
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"config has no field {key!r}")
        if isinstance(value, dict) and isinstance(node[leaf], ml_collections.ConfigDict):
            override(node[leaf], value)
        else:
            node[leaf] = value
    return c
