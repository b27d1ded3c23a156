"""Decoding: sampling from causal models through a KV cache, and fill-mask for bidirectional ones.

Generation is sequential (claim C6): one batched prefill of the left-padded prompts, then one
token per step, each step attending to the cache instead of recomputing the prefix. The whole
loop (prefill, `lax.while_loop` over steps, sampling) is one jitted function, compiled once per
shape and sampling setting; it stops early once every row has produced `eos_id`.

Sampling: temperature 0 is greedy; otherwise logits are divided by the temperature, then cut to
the `top_k` most likely tokens and to the smallest set whose probability reaches `top_p` (the
most likely token always stays), and a token is drawn from what is left.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.masks import make_attention_mask


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How `generate` picks each new token: greedy at temperature 0, else sampled with optional
    top-k and top-p cuts; a row stops at `eos_id`."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0  # 1: no cut
    eos_id: int | None = None  # stop a row once it samples this id
    pad_id: int = 0  # written after a row has stopped

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 turns it off)")


def filter_logits(logits_BV: jnp.ndarray, top_k: int, top_p: float) -> jnp.ndarray:
    """Logits with everything outside the top-k and top-p sets set to -inf."""
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # A token stays if the tokens strictly more likely than it hold less than top_p.
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept_BV = before_BV < top_p
        threshold_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
    return logits_BV


def sample_logits(rng: jax.Array, logits_BV: jnp.ndarray, cfg: SamplingConfig) -> jnp.ndarray:
    if cfg.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    filtered_BV = filter_logits(logits_BV / cfg.temperature, cfg.top_k, cfg.top_p)
    return jax.random.categorical(rng, filtered_BV, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> dict[str, np.ndarray]:
    """Prompts right-aligned in one `[B, P]` array, so every row's next token goes to slot P."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start it with BOS)")
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    valid = np.zeros((len(prompts), P), bool)
    positions = np.zeros((len(prompts), P), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p) :] = p
        valid[i, P - len(p) :] = True
        positions[i, P - len(p) :] = np.arange(len(p))
    return {"tokens": tokens, "valid": valid, "positions": positions}


def right_pad(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Whole rows left-aligned in one `[B, L]` batch (tokens, segment_ids, positions); padding
    is segment 0, which no query attends to."""
    L = max(len(r) for r in rows)
    batch = {k: np.zeros((len(rows), L), np.int32) for k in ("tokens", "segment_ids", "positions")}
    for i, r in enumerate(rows):
        batch["tokens"][i, : len(r)], batch["segment_ids"][i, : len(r)] = r, 1
        batch["positions"][i, : len(r)] = np.arange(len(r))
    return batch


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "bidirectional_prompt"))
def _generate(graphdef, state, tokens_BP, valid_BP, positions_BP, rng, cfg, bidirectional_prompt):
    model = nnx.merge(graphdef, state)
    model.eval()
    B, P = tokens_BP.shape
    cache = model.init_cache(B, P + cfg.max_new_tokens)
    prefix_BP = valid_BP if bidirectional_prompt else None
    logits_BPV, cache = model.extend(tokens_BP, positions_BP, valid_BP, cache, prefix_BT=prefix_BP)
    eos = -1 if cfg.eos_id is None else cfg.eos_id

    def cond(carry):
        i, _, _, _, _, done_B, _ = carry
        return (i < cfg.max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, cache, logits_BV, pos_B, out_BN, done_B, rng = carry
        rng, step_rng = jax.random.split(rng)
        tok_B = jnp.where(done_B, cfg.pad_id, sample_logits(step_rng, logits_BV, cfg))
        out_BN = out_BN.at[:, i].set(tok_B)
        logits_B1V, cache = model.extend(tok_B[:, None], pos_B[:, None], ~done_B[:, None], cache)
        return i + 1, cache, logits_B1V[:, 0], pos_B + 1, out_BN, done_B | (tok_B == eos), rng

    carry = (
        jnp.zeros((), jnp.int32),
        cache,
        logits_BPV[:, -1],  # right-aligned prompts: column P-1 is every row's last token
        positions_BP[:, -1] + 1,
        jnp.full((B, cfg.max_new_tokens), cfg.pad_id, jnp.int32),
        jnp.zeros((B,), bool),
        rng,
    )
    num_steps, _, _, _, out_BN, done_B, _ = jax.lax.while_loop(cond, body, carry)
    return out_BN, done_B, num_steps


@dataclasses.dataclass
class Generation:
    """What `generate` returns: the new tokens per prompt, which rows stopped, the steps run."""

    tokens: list[list[int]]  # new tokens per prompt, up to and without EOS
    stopped: list[bool]  # the row produced EOS
    steps: int  # decoding steps run (the loop ends early once every row stopped)


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    rng: jax.Array,
    *,
    bidirectional_prompt: bool = False,
) -> Generation:
    """Samples continuations of `prompts` (token ids, BOS first) from a causal model.

    `bidirectional_prompt=True` lets a prefix LM read its prompt as the bidirectional prefix it
    was trained with. The model is not modified (it is run in eval mode on a copy of its state).
    """
    batch = left_pad(prompts, cfg.pad_id)
    needed = batch["tokens"].shape[1] + cfg.max_new_tokens
    model_cfg = model.cfg
    if model_cfg.position == "learned" and needed > model_cfg.max_len:
        raise ValueError(
            f"prompt ({batch['tokens'].shape[1]} tokens) + max_new_tokens ({cfg.max_new_tokens}) = "
            f"{needed} exceeds the learned position table (model.max_len={model_cfg.max_len}); "
            "shorten the prompt or ask for fewer new tokens"
        )
    graphdef, state = nnx.split(model)
    out_BN, done_B, steps = jax.device_get(
        _generate(
            graphdef,
            state,
            batch["tokens"],
            batch["valid"],
            batch["positions"],
            rng,
            cfg,
            bidirectional_prompt,
        )
    )
    tokens = []
    for row, done in zip(out_BN, done_B, strict=True):
        row = [int(t) for t in row]
        tokens.append(row[: row.index(cfg.eos_id)] if done else row[: int(steps)])
    return Generation(tokens=tokens, stopped=[bool(d) for d in done_B], steps=int(steps))


@functools.partial(jax.jit, static_argnames=("graphdef", "mask_kind", "top_k"))
def _fill_mask(graphdef, state, tokens_BL, segment_ids_BL, positions_BL, mask_kind, top_k):
    model = nnx.merge(graphdef, state)
    model.eval()
    mask_B1LL = make_attention_mask(mask_kind, segment_ids_BL)
    probs_BLV = jax.nn.softmax(model(tokens_BL, mask_B1LL, positions_BL), axis=-1)
    probs_BLK, ids_BLK = jax.lax.top_k(probs_BLV, top_k)
    return ids_BLK, probs_BLK


@dataclasses.dataclass
class FilledMask:
    """The top-k predictions for one masked position, most likely first."""

    position: int
    token_ids: list[int]  # the top-k predictions, most likely first
    probs: list[float]


def fill_mask(
    model: nnx.Module,
    batch: dict[str, np.ndarray],
    *,
    mask_id: int,
    top_k: int = 5,
    mask_kind: str = "bidirectional",
) -> list[list[FilledMask]]:
    """Top-k predictions at every `mask_id` token of each row of `batch` (tokens, segment_ids,
    positions, each `[B, L]`), from one bidirectional forward pass."""
    graphdef, state = nnx.split(model)
    rows = (jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions"))
    ids_BLK, probs_BLK = jax.device_get(_fill_mask(graphdef, state, *rows, mask_kind, top_k))
    out = []
    for b, row in enumerate(np.asarray(batch["tokens"])):
        out.append(
            [
                FilledMask(int(t), [int(i) for i in ids_BLK[b, t]], [float(p) for p in probs_BLK[b, t]])
                for t in np.flatnonzero(row == mask_id)
            ]
        )
    return out
