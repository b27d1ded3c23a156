"""Fine-tuning every weight of a pretrained model, with a linear head on a pooled representation.

The head reads one vector per row, pooled from `Transformer.hidden_states` under the mask the model was
pretrained with:
- "last" real token for a causal model: the only position whose causal view covers the input;
- "mean" over real tokens for bidirectional and prefix models (a prefix LM reads the whole input
  as its prefix, see `probes.reading_mask`), where every position sees everything.

Inputs are rows [BOS, tokens..., padding] with segment ids 1 on real tokens and 0 on padding.
The whole run (every AdamW step) is one jitted `lax.scan` over pure parameter dicts: it compiles
once, pays no per-step Python cost, and never touches the model object it was given.

`hmm_pair_task` is a classification task with a known optimum: which of two close HMMs
(`train.data.hmm.perturbed`) generated a sequence. The Bayes-optimal classifier is the sign of
the log-likelihood ratio, so a fine-tuned model's accuracy has an exact ceiling.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.downstream.probes import reading_mask
from train.data.hmm import HMM, PAIR_STRENGTH, HMMSpec, perturbed
from train.data.sources import hmm_rows

POOLINGS: tuple[str, ...] = ("last", "mean")
Examples = dict[str, np.ndarray]  # tokens, segment_ids, positions [N, L]; labels [N]

# Separates the task's samples from the training stream and the LM eval set.
_PAIR_STREAM = 0xF17E
_EVAL_BATCH = 256


def default_pooling(mask_kind: str) -> str:
    return "last" if mask_kind == "causal" else "mean"


def pool(h_BLD: jnp.ndarray, segment_ids_BL: jnp.ndarray, pooling: str) -> jnp.ndarray:
    """One vector `[B, D]` per row, from real tokens only (padding never reaches the head)."""
    real_BL = segment_ids_BL != 0
    if pooling == "last":
        last_B = jnp.max(jnp.where(real_BL, jnp.arange(h_BLD.shape[1]), 0), axis=1)
        return jnp.take_along_axis(h_BLD, last_B[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        count_B1 = jnp.maximum(real_BL.sum(1, keepdims=True), 1)
        return (h_BLD * real_BL[..., None]).sum(1) / count_B1
    raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")


class Classifier(nnx.Module):
    """A pretrained encoder and a linear head on its pooled final hidden states."""

    def __init__(
        self, encoder: nnx.Module, num_classes: int, mask_kind: str, pooling: str, *, rngs: nnx.Rngs
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        self.encoder = encoder
        self.mask_kind = mask_kind
        self.pooling = pooling
        self.head = nnx.Linear(
            encoder.cfg.d_model, num_classes, kernel_init=nnx.initializers.normal(0.02), rngs=rngs
        )

    def __call__(self, tokens_BL, segment_ids_BL, positions_BL) -> jnp.ndarray:
        mask_B1LL = reading_mask(self.mask_kind, segment_ids_BL)
        h_BLD = self.encoder.hidden_states(tokens_BL, mask_B1LL, positions_BL)
        return self.head(pool(h_BLD, segment_ids_BL, self.pooling)).astype(jnp.float32)


def _loss(graphdef, params, rest, batch: dict[str, jnp.ndarray]):
    model = nnx.merge(graphdef, params, rest)
    logits_BC = model(batch["tokens"], batch["segment_ids"], batch["positions"])
    nll_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, batch["labels"])
    return nll_B.mean(), nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))


@dataclasses.dataclass(frozen=True)
class _Hyper:
    """Static (hashable) optimizer settings: repeated calls with the same ones reuse the compile."""

    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float

    def optimizer(self) -> optax.GradientTransformation:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            self.learning_rate,
            self.warmup_steps,
            max(self.steps, self.warmup_steps + 1),
            end_value=0.1 * self.learning_rate,
        )
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
        return optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(schedule, weight_decay=self.weight_decay, mask=decay_mask),
        )


@functools.partial(jax.jit, static_argnames=("graphdef", "hyper"))
def _train(graphdef, hyper: _Hyper, params, rest, data: dict[str, jnp.ndarray], batch_index_SB: jnp.ndarray):
    """Every step in one scan; returns (params, rest, loss per step)."""
    tx = hyper.optimizer()

    def step(carry, index_B):
        params, rest, opt_state = carry
        batch = jax.tree.map(lambda a: a[index_B], data)
        (loss, rest), grads = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)(
            params, rest, batch
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), rest, opt_state), loss

    (params, rest, _), losses_S = jax.lax.scan(step, (params, rest, tx.init(params)), batch_index_SB)
    return params, rest, losses_S


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _predict(graphdef, params, rest, batch: dict[str, jnp.ndarray]) -> jnp.ndarray:
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model(batch["tokens"], batch["segment_ids"], batch["positions"])


def evaluate(graphdef, params, rest, examples: Examples) -> dict[str, float]:
    """Accuracy and mean loss, in fixed-size batches padded with empty rows (then dropped)."""
    n = len(examples["labels"])
    pad = -n % _EVAL_BATCH
    padded = {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)) for k, v in examples.items()}
    logits = [
        np.asarray(_predict(graphdef, params, rest, {k: v[i : i + _EVAL_BATCH] for k, v in padded.items()}))
        for i in range(0, n + pad, _EVAL_BATCH)
    ]
    logits_NC = np.concatenate(logits)[:n]
    labels_N = examples["labels"]
    log_p_NC = np.asarray(jax.nn.log_softmax(logits_NC))
    return {
        "accuracy": float((logits_NC.argmax(-1) == labels_N).mean()),
        "loss": float(-log_p_NC[np.arange(n), labels_N].mean()),
    }


def finetune(
    model: nnx.Module,
    mask_kind: str,
    train_examples: Examples,
    eval_examples: Examples,
    *,
    num_classes: int,
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    pooling: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tunes all of `model`'s weights plus a fresh head; returns eval metrics.

    `model` itself is left as it was: training runs on pure copies of its parameters. Returns
    `{"accuracy", "loss"}` on `eval_examples` plus the final training loss (mean of the last
    10% of steps), the pooling used and the wall time in seconds (compile included).
    """
    start = time.perf_counter()
    pooling = pooling or default_pooling(mask_kind)
    # Split off pure dicts first: the classifier is built around a fresh merge of them, so
    # nothing below can reach the Variables of the model that was passed in.
    encoder = nnx.merge(*nnx.split(model))
    classifier = Classifier(encoder, num_classes, mask_kind, pooling, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(classifier, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    warmup_steps = max(steps // 10, 1) if warmup_steps is None else warmup_steps
    hyper = _Hyper(steps, float(learning_rate), warmup_steps, float(weight_decay))

    n = len(train_examples["labels"])
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    batch_index_SB = order[: steps * batch_size].reshape(steps, batch_size)
    data = {k: jnp.asarray(v) for k, v in train_examples.items()}
    params, rest, losses_S = _train(graphdef, hyper, params, rest, data, jnp.asarray(batch_index_SB))

    metrics = evaluate(graphdef, params, rest, eval_examples)
    losses_S = np.asarray(losses_S)
    return {
        **metrics,
        "train_loss": float(losses_S[-max(steps // 10, 1) :].mean()),
        "pooling": pooling,
        "seconds": time.perf_counter() - start,
    }


def hmm_pair_task(
    spec: HMMSpec | None = None,
    *,
    num_train: int = 4096,
    num_eval: int = 1024,
    seq_len: int = 64,
    seed: int = 0,
    strength: float = PAIR_STRENGTH,
) -> tuple[Examples, Examples, float]:
    """Which HMM generated a row: `HMM(spec)` (label 0) or `perturbed(spec, strength)` (label 1).

    `spec` defaults to the default corpus's `HMMSpec()`. `seq_len` is the row length: BOS then
    `seq_len - 1` symbols, token ids as in `HMMSource.rows`. Each split is half of each class,
    shuffled. Returns (train, eval, the Bayes-optimal accuracy on this eval set: the sign of the
    log-likelihood ratio, equal priors).
    """
    spec = spec or HMMSpec()  # the default corpus's HMM
    hmms = (HMM(spec), perturbed(spec, strength))

    def split(index: int, num: int) -> tuple[Examples, np.ndarray]:
        rng = np.random.default_rng([spec.seed, _PAIR_STREAM, seed, index])
        labels = rng.permutation(np.arange(num) % 2).astype(np.int32)
        symbols = np.empty((num, seq_len - 1), np.int32)
        for label, hmm in enumerate(hmms):
            symbols[labels == label] = hmm.sample(rng, int((labels == label).sum()), seq_len - 1)
        return {**hmm_rows(symbols), "labels": labels}, symbols

    train, _ = split(0, num_train)
    eval_, eval_symbols = split(1, num_eval)
    llr_N = hmms[1].log_likelihood(eval_symbols) - hmms[0].log_likelihood(eval_symbols)
    bayes = float(((llr_N > 0).astype(np.int32) == eval_["labels"]).mean())
    return train, eval_, bayes
