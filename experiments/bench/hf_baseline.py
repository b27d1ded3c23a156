"""The Hugging Face baseline of `python -m experiments.bench --baseline hf`: what a researcher would
otherwise train, at identical shapes, batch, objective transform and optimizer.

`FlaxGPT2LMHeadModel` for the causal LM and `FlaxBertForMaskedLM` for the masked LM, from
transformers 4.57.x (the last release with Flax models: `pip install -e ".[hf]"`), with dropout
off as in our model. The batch goes through the same objective transform and the loss is the
same token-weighted cross-entropy; the optimizer is `train.loop.step.make_optimizer(config)`. What
differs is the model code: HF's BERT computes vocabulary logits at every position and the loss
then reads the masked ones, where ours gathers the masked positions first; HF's positions are
learned absolute embeddings (benchmark ours with `--config.model.position=learned` for parity).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass
class HFRunner:
    """One jitted HF train step and its state; `run()` does one step and waits for it."""

    name: str
    step: Any
    params: Any
    opt_state: Any
    batch: dict
    num_params: int
    compile_seconds: float = 0.0
    traceable: Any = None  # the jitted step before compiling, for experiments/bench/matmul_floor.py

    def run(self) -> None:
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        jax.block_until_ready(loss)


# Per objective: HF's config and model classes, HF's names for (positions, width, layers, heads,
# MLP width), and for the dropout rates, which are all 0 as in our model.
HF_MODELS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "clm": (
        "GPT2Config",
        "FlaxGPT2LMHeadModel",
        ("n_positions", "n_embd", "n_layer", "n_head", "n_inner"),
        ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    ),
    "mlm": (
        "BertConfig",
        "FlaxBertForMaskedLM",
        (
            "max_position_embeddings",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ),
        ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    ),
}


def make_hf_runner(config: Any, vocab_size: int, batch: dict) -> HFRunner:
    """HF's model of `config.objective` at `config`'s shapes, its train step compiled on `batch`."""
    if config.objective not in HF_MODELS:
        raise SystemExit(f"--baseline hf compares objective 'clm' or 'mlm', not {config.objective!r}")
    config_class, name, shape_names, dropout_names = HF_MODELS[config.objective]
    try:
        import transformers

        hf_config_class, hf_model_class = getattr(transformers, config_class), getattr(transformers, name)
    except (ImportError, AttributeError) as e:  # not installed, or a release without Flax models
        raise SystemExit(
            "--baseline hf needs Hugging Face transformers 4.57.x with Flax: pip install -e '.[hf]'"
        ) from e
    from train.loop import step as step_lib
    from train.objectives import make_objective

    m = config.model
    shape = (config.seq_len, m.d_model, m.num_layers, m.num_heads, m.mlp_dim)
    hf_config = hf_config_class(
        vocab_size=vocab_size,
        **dict(zip(shape_names, shape, strict=True)),
        **dict.fromkeys(dropout_names, 0.0),
    )
    model = hf_model_class(hf_config, seed=config.seed, dtype=jnp.dtype(m.dtype))

    objective = make_objective(config, vocab_size)
    tx = step_lib.make_optimizer(config)
    rng = jax.random.PRNGKey(config.seed)

    def train_step(params, opt_state, batch):
        mb = objective.transform(batch, rng)
        attention_mask = (mb["segment_ids"] != 0).astype(jnp.int32)

        def loss_fn(params):
            logits_BLV = model(mb["inputs"], attention_mask=attention_mask, params=params, train=False).logits
            if "mlm_positions" in mb:  # every position's logits were computed; score the masked
                logits_BLV = jnp.take_along_axis(logits_BLV, mb["mlm_positions"][..., None], axis=1)
            nll = optax.softmax_cross_entropy_with_integer_labels(
                logits_BLV.astype(jnp.float32), mb["targets"]
            )
            w = mb["weights"].astype(jnp.float32)
            return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, batch = model.params, {k: jnp.asarray(v) for k, v in batch.items()}
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    compiled = jitted.lower(params, opt_state, batch).compile()
    return HFRunner(
        name=name,
        step=compiled,
        params=params,
        opt_state=opt_state,
        batch=batch,
        num_params=int(sum(x.size for x in jax.tree.leaves(params))),
        compile_seconds=time.perf_counter() - t0,
        traceable=jitted,
    )
