"""The Hugging Face baseline of `experiments.benchmark --baseline hf`: what a researcher would
otherwise train, at identical shapes, batch, objective transform and optimizer.

`FlaxGPT2LMHeadModel` for the causal LM and `FlaxBertForMaskedLM` for the masked LM, from
transformers 4.57.x (the last release with Flax models: `pip install -e ".[hf]"`), with dropout
off as in our model. The batch goes through the same objective transform and the loss is the
same token-weighted cross-entropy; the optimizer is `train.step.make_optimizer(config)`. What
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

    def run(self) -> None:
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.batch)
        jax.block_until_ready(loss)


def make_hf_runner(config: Any, vocab_size: int, batch: dict) -> HFRunner:
    try:
        from transformers import BertConfig, FlaxBertForMaskedLM, FlaxGPT2LMHeadModel, GPT2Config
    except ImportError as e:
        raise SystemExit(
            "--baseline hf needs Hugging Face transformers 4.57.x with Flax: pip install -e '.[hf]'"
        ) from e
    from train import step as step_lib
    from train.objectives import make_objective

    m = config.model
    dtype = jnp.dtype(m.dtype)
    if config.objective == "clm":
        hf_config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=config.seq_len,
            n_embd=m.d_model,
            n_layer=m.num_layers,
            n_head=m.num_heads,
            n_inner=m.mlp_dim,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model, name = FlaxGPT2LMHeadModel(hf_config, seed=config.seed, dtype=dtype), "FlaxGPT2LMHeadModel"
    elif config.objective == "mlm":
        hf_config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=m.d_model,
            num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads,
            intermediate_size=m.mlp_dim,
            max_position_embeddings=config.seq_len,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model, name = FlaxBertForMaskedLM(hf_config, seed=config.seed, dtype=dtype), "FlaxBertForMaskedLM"
    else:
        raise SystemExit(f"--baseline hf compares objective 'clm' or 'mlm', not {config.objective!r}")

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
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
    return HFRunner(
        name=name,
        step=compiled,
        params=params,
        opt_state=opt_state,
        batch=batch,
        num_params=int(sum(x.size for x in jax.tree.leaves(params))),
        compile_seconds=time.perf_counter() - t0,
    )
