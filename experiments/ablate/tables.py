"""The ablation tables: which runs make each one, at the `cpu` and `gpu` presets.

A table is a list of rows; a row is an objective plus config overrides on top of the preset.
Every (row, seed) is one independent `python -m train.main` run. The presets are
`experiments.common.PRESETS`: `cpu` is sized so that a table with 3 seeds finishes within about
30 minutes on a 2-core CPU; `gpu` uses the `small` shapes for as many steps as one accelerator
does in a comparable time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from experiments import common

# The ablation tables run the common presets as they are; a table adds its own overrides.
PRESETS: dict[str, dict[str, Any]] = common.PRESETS


@dataclasses.dataclass(frozen=True)
class Row:
    objective: str  # "clm", "mlm" or "seq2seq"
    setting: dict[str, Any]  # what this row varies, shown as columns
    overrides: dict[str, Any]  # config overrides, on top of the preset
    # Per preset, on top of `overrides` (sizes that must differ by preset, e.g. matched widths).
    preset_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def slug(self) -> str:
        parts = [self.objective] + [f"{k}-{v}" for k, v in self.setting.items()]
        return "_".join(str(p).replace(".", "p").replace("/", "-") for p in parts)

    @property
    def cells(self) -> list[str]:
        """The row's first cells in a table: the objective's name, then each setting's value."""
        return [common.OBJECTIVE_NAMES[self.objective], *map(str, self.setting.values())]


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    claim: str
    rows: list[Row]
    # In-process measurements (experiments/ablate/measure.py): "init_attention", "step_timing",
    # "eval_at_15", "by_length", "attention_kinds"; "grad_norms": runs log per-layer statistics
    # (train/observe/layer_stats.py) and the plot adds each block's gradient norm over training, of the
    # parameter kinds in `grad_kinds` (all when empty).
    extra: tuple[str, ...] = ()
    grad_kinds: tuple[str, ...] = ()
    preset_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _both(
    settings: list[dict[str, Any]], to_overrides: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[Row]:
    """The same settings under the causal and the masked LM."""
    return [Row(o, s, to_overrides(s)) for o in ("clm", "mlm") for s in settings]


def _position_table() -> Table:
    return Table(
        "position",
        "Positional encoding x objective",
        "C1",
        _both(
            [{"position": p} for p in ("none", "learned", "sinusoidal", "rotary")],
            lambda s: {"model.position": s["position"]},
        ),
    )


def _heads_table() -> Table:
    return Table(
        "heads",
        "Number of heads at fixed width",
        "C3",
        _both([{"heads": h} for h in (1, 2, 4, 8, 16)], lambda s: {"model.num_heads": s["heads"]}),
    )


def _attn_scale_table() -> Table:
    return Table(
        "attn_scale",
        "Attention logit scale x head dim d_k (causal LM)",
        "C5",
        # d_model is 256 in both presets, so 256 // d_k heads give head dim d_k.
        [
            Row("clm", {"scale": sc, "d_k": dk}, {"model.attn_scale": sc, "model.num_heads": 256 // dk})
            for dk in (16, 64, 256)
            for sc in ("sqrt", "one", "inv")
        ],
        extra=("init_attention", "grad_norms"),
        grad_kinds=("attn_query", "attn_key"),  # what the logit scale acts on
        preset_overrides={
            "cpu": {
                "model.d_model": 256,
                "model.mlp_dim": 512,
                "model.num_layers": 1,
                "batch_size": 16,
                "seq_len": 64,
                "num_train_steps": 300,
            },
            "gpu": {"model.d_model": 256, "model.mlp_dim": 1024},
        },
    )


def _norm_table() -> Table:
    return Table(
        "norm",
        "Normalisation x placement x objective",
        "C8",
        _both(
            [
                {"norm": n, "placement": p}
                for n in ("layernorm", "rmsnorm", "batchnorm")
                for p in ("pre", "post")
            ],
            lambda s: {"model.norm": s["norm"], "model.norm_position": s["placement"]},
        ),
    )


def _warmup_table() -> Table:
    return Table(
        "warmup",
        "Pre-LN vs post-LN, with and without warmup, at depth (causal LM)",
        "Xiong et al. 2020",
        [
            Row("clm", {"placement": p, "warmup": w}, {"model.norm_position": p, "optim.warmup_steps": w})
            for p in ("pre", "post")
            for w in (0, 100)
        ],
        extra=("grad_norms",),
        preset_overrides={
            "cpu": {
                "model.num_layers": 8,
                "model.d_model": 64,
                "optim.learning_rate": 3e-3,
                "num_train_steps": 400,
            },
            "gpu": {"model.num_layers": 24, "optim.learning_rate": 1e-3},
        },
    )


def _mask_rate_table() -> Table:
    return Table(
        "mask_rate",
        "Masking rate for the masked LM",
        "Wettig et al. 2023",
        [Row("mlm", {"mask_rate": r}, {"mlm.rate": r}) for r in (0.15, 0.3, 0.4, 0.6)],
        extra=("eval_at_15",),
        preset_overrides={
            "cpu": {"num_train_steps": 1000, "eval_every_steps": 250, "checkpoint_every_steps": 250}
        },
    )


def _lstm_table() -> Table:
    return Table(
        "lstm",
        "Transformer vs LSTM at equal parameters: loss after equal steps, cost vs length",
        "C1",
        # Layer counts that match the 2-layer Transformer's parameters (about 99k besides the
        # embedding at width 64): 3 LSTM layers; 1 bidirectional layer (two LSTMs + merge).
        [
            Row(o, {"arch": a, "layers": n}, {"model.arch": a, "model.num_layers": n})
            for o, a, n in [
                ("clm", "transformer", 2),
                ("clm", "lstm", 3),
                ("mlm", "transformer", 2),
                ("mlm", "lstm", 1),
            ]
        ],
        extra=("step_timing",),
    )


def _seq2seq_table() -> Table:
    return Table(
        "seq2seq",
        "Encoder-decoder Transformer vs LSTM seq2seq with and without attention, by source length",
        "C10, C11",
        # LSTM widths match the Transformer's parameters (235,840 at cpu, 3,695,872 at gpu,
        # within 0.3%): one layer per side, so the bottleneck is exactly one (c, h) pair.
        # Copy makes the first target depend on the first (most distant) source token;
        # reverse makes it depend on the last one, the dependency an RNN finds first.
        [
            Row(
                "seq2seq",
                {"task": task, "model": model},
                {"dataset": f"seq2seq:{task}", **overrides},
                preset,
            )
            for task in ("copy", "reverse")
            for model, overrides, preset in (
                ("transformer", {"model.arch": "encdec"}, {}),
                (
                    "lstm_bottleneck",
                    {"model.arch": "lstm_seq2seq", "model.num_layers": 1, "model.d_model": 120},
                    {"gpu": {"model.d_model": 479}},
                ),
                (
                    "lstm_attention",
                    {"model.arch": "lstm_attention", "model.num_layers": 1, "model.d_model": 110},
                    {"gpu": {"model.d_model": 440}},
                ),
            )
        ],
        extra=("by_length", "attention_kinds"),
        preset_overrides={
            "cpu": {
                "model.position": "sinusoidal",  # the original Transformer's
                "seq2seq.min_len": 4,
                "seq2seq.max_len": 40,
                "seq2seq.eval_lengths": (5, 10, 20, 30, 40),
                "seq_len": 42,
                "model.max_len": 42,
                "num_train_steps": 2500,
                "optim.warmup_steps": 100,
                "eval_every_steps": 500,
                "checkpoint_every_steps": 500,
            },
            "gpu": {
                "model.position": "sinusoidal",
                "model.num_layers": 2,
                "model.d_model": 256,
                "model.mlp_dim": 1024,
                "seq2seq.max_len": 512,
                "seq2seq.eval_lengths": (8, 32, 64, 128, 256, 512),
                "seq_len": 514,
                "model.max_len": 514,
            },
        },
    )


def make_tables() -> dict[str, Table]:
    """Every ablation table by name."""
    tables = (
        _position_table(),
        _heads_table(),
        _attn_scale_table(),
        _norm_table(),
        _warmup_table(),
        _mask_rate_table(),
        _lstm_table(),
        _seq2seq_table(),
    )
    return {t.name: t for t in tables}


def run_overrides(table: Table, row: Row, preset: str, seed: int) -> dict[str, Any]:
    """One run's config overrides: preset, table, row, the row's per-preset sizes, seed (later win)."""
    return {
        **PRESETS[preset],
        **table.preset_overrides.get(preset, {}),
        **row.overrides,
        **row.preset_overrides.get(preset, {}),
        **({"log_layer_stats": True} if "grad_norms" in table.extra else {}),
        "seed": seed,
    }
