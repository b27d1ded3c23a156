"""Fused attention: kernels that never write out the `[B, N, T, S]` logits, given the mask as
its rule (`models.masks.SegmentMask`).

- "splash": Pallas splash attention, the TPU kernel MaxText and Levanter run by default.
- "pallas_gpu": Pallas's GPU flash attention (Triton), which takes segment ids; cuDNN through
  `jax.nn.dot_product_attention` takes no segment ids, so it cannot serve packed rows.

Either runs as the written-out attention would, for every mask `models/masks.py` builds: the
kernel compares the mask's ids (packed documents, padding) under its causal or full block
pattern; a prefix (a prefix LM's, a hybrid's bidirectional rows) is one causal call for the
queries after it and one full call restricted to the prefix for those inside, selected per
query. On a CPU the kernels run in Pallas's interpret mode, which is how the tests check them.
Under a device mesh (`jax.sharding.use_abstract_mesh`, set by train/loop/build.py) each device
runs the kernel on its own rows through `shard_map`: every mesh axis shards the batch.
What a kernel cannot serve, `unsupported` names, and the block falls back to the written-out
attention, logged once.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from models.masks import SegmentMask

FUSED_IMPLS: tuple[str, ...] = ("splash", "pallas_gpu")
# Splash's block along queries and keys: the largest of these that divides the length (MaxText
# and Levanter use 512, clipped to the length); the kernel needs multiples of 128.
SPLASH_BLOCKS = (512, 256, 128)
# The Pallas GPU kernel's defaults: 128 forward, 32 backward (queries and keys alike).
GPU_BLOCK, GPU_BACKWARD_BLOCK = 128, 32
CAUSAL_SCOPE, FULL_SCOPE = "fused_attention_causal", "fused_attention_full"
# An id no token has: the prefix call gives it to every position after the prefix.
_OUTSIDE = jnp.iinfo(jnp.int32).min


def _block(length: int) -> int | None:
    return next((b for b in SPLASH_BLOCKS if length % b == 0), None)


def unsupported(impl: str, q_len: int, kv_len: int, mask) -> str | None:
    """Why `impl` cannot run this attention (None: it can): the reason names the mask or shape."""
    if not isinstance(mask, SegmentMask):
        return "a mask given as a dense array (build it with models.masks.make_segment_mask)"
    if impl == "splash" and (_block(q_len) is None or _block(kv_len) is None):
        return f"lengths {q_len} x {kv_len} (multiples of 128 are needed)"
    if impl == "pallas_gpu":
        if mask.cross:
            return "cross-attention (the kernel takes one segment id array for queries and keys)"
        power_of_two = q_len >= 16 and q_len & (q_len - 1) == 0
        if q_len % GPU_BLOCK and not power_of_two:
            return f"length {q_len} (a multiple of {GPU_BLOCK}, or a power of two from 16, is needed)"
    return None


@functools.cache
def warn_once(message: str) -> None:
    logging.warning(message)


def _platform(mesh) -> str:
    device = getattr(mesh, "abstract_device", None)
    return device.platform if device is not None and not mesh.empty else jax.default_backend()


def _splash(causal: bool, interpret: bool, q_BTNH, k_BSNH, v_BSNH, q_ids_BT, kv_ids_BS):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    _, T, N, _ = q_BTNH.shape
    S = k_BSNH.shape[1]
    head = sm.CausalMask((T, S)) if causal else sm.FullMask((T, S))
    bq, bk = _block(T), _block(S)
    sizes = sk.BlockSizes(bq, bk, bk, bq, bk, bk, bq, bk)
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([head] * N), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )

    def one_row(q_NTH, k_NSH, v_NSH, q_ids_T, kv_ids_S):
        return kernel(q_NTH, k_NSH, v_NSH, segment_ids=sk.SegmentIds(q_ids_T, kv_ids_S))

    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    o_BNTH = jax.vmap(one_row)(*map(heads_first, (q_BTNH, k_BSNH, v_BSNH)), q_ids_BT, kv_ids_BS)
    return heads_first(o_BNTH)


def _pallas_gpu(causal: bool, interpret: bool, q_BTNH, k_BSNH, v_BSNH, q_ids_BT, kv_ids_BS):
    from jax.experimental.pallas.ops.gpu import attention

    del kv_ids_BS  # self-attention: the same ids (`unsupported` turns cross-attention away)
    T = q_BTNH.shape[1]
    fwd, bwd = min(GPU_BLOCK, T), min(GPU_BACKWARD_BLOCK, T)
    sizes = attention.BlockSizes(fwd, fwd, bwd, bwd, bwd, bwd)
    return attention.mha(
        q_BTNH, k_BSNH, v_BSNH, q_ids_BT, causal=causal, block_sizes=sizes, interpret=interpret
    )


_KERNELS = {"splash": _splash, "pallas_gpu": _pallas_gpu}


def _call(impl: str, causal: bool, q_BTNH, k_BSNH, v_BSNH, q_ids_BT, kv_ids_BS):
    """One kernel call, on each device's own rows when a mesh is set. Its scope names its block
    pattern, which a compiled program's ops keep (experiments/bench/aot/hlo_cost.py reads it)."""
    mesh = jax.sharding.get_abstract_mesh()
    kernel = functools.partial(_KERNELS[impl], causal, _platform(mesh) == "cpu")
    args = (q_BTNH, k_BSNH, v_BSNH, q_ids_BT, kv_ids_BS)
    with jax.named_scope(CAUSAL_SCOPE if causal else FULL_SCOPE):
        if mesh.empty or mesh.size == 1:
            return kernel(*args)
        rows = P(mesh.axis_names)
        return jax.shard_map(kernel, mesh=mesh, in_specs=(rows,) * 5, out_specs=rows, check_vma=False)(*args)


def attention(impl: str, q_BTNH, k_BSNH, v_BSNH, mask: SegmentMask):
    """`[B, T, N, H]` attention of scaled queries over keys and values under `mask`'s rule,
    through kernel `impl` (check `unsupported` first)."""
    whole = _call(impl, mask.causal, q_BTNH, k_BSNH, v_BSNH, mask.q_ids_BT, mask.kv_ids_BS)
    if mask.prefix_len_B is None:
        return whole
    # Inside the prefix a query sees the prefix's keys of its segment (which include every key
    # at or before it); after it, the causal call's keys are the whole rule.
    T = q_BTNH.shape[1]
    inside_BT = jnp.arange(T)[None, :] < mask.prefix_len_B[:, None]
    q_ids_BT = jnp.where(inside_BT, mask.q_ids_BT, _OUTSIDE)
    kv_ids_BT = jnp.where(inside_BT, mask.kv_ids_BS, _OUTSIDE)
    prefix = _call(impl, False, q_BTNH, k_BSNH, v_BSNH, q_ids_BT, kv_ids_BT)
    return jnp.where(inside_BT[:, :, None, None], prefix, whole)


# What each kernel call does, for counting (`kernel_cost`): the compiled program's custom call
# (its instruction name begins so) -> (implementation, pass, products of [rows x cols] blocks).
# Splash's passes are separate kernels; the Pallas GPU backward computes dq, dk and dv in one.
KERNEL_CALLS: dict[str, tuple[str, str, int]] = {
    "splash_mha_fwd": ("splash", "fwd", 2),  # Q K^T, P V
    "splash_mha_dq": ("splash", "dq", 3),  # Q K^T again, dO V^T, dS K
    "splash_mha_dkv": ("splash", "dkv", 4),  # Q K^T again, dO V^T, P^T dO, dS^T Q
    "mha_forward": ("pallas_gpu", "fwd", 2),
    "mha_backward": ("pallas_gpu", "bwd", 5),
}


def _blocks(impl: str, pass_: str, T: int, S: int) -> tuple[int, int]:
    if impl == "splash":
        return _block(T) or T, _block(S) or S
    size = GPU_BLOCK if pass_ == "fwd" else GPU_BACKWARD_BLOCK
    return min(size, T), min(size, S)


def visited_fraction(T: int, S: int, block_q: int, block_kv: int, causal: bool) -> float:
    """The fraction of (query block, key block) pairs a kernel computes: all of them, or under a
    causal pattern those with a key at or before some query of the block."""
    if not causal:
        return 1.0
    nq, nk = -(-T // block_q), -(-S // block_kv)
    visited = sum(min(nk, -(-((i + 1) * block_q) // block_kv)) for i in range(nq))
    return visited / (nq * nk)


def kernel_cost(call: str, B: int, N: int, T: int, S: int, H: int, itemsize: int, causal: bool):
    """(FLOPs, bytes read and written in HBM) of one call of kernel `call` (a `KERNEL_CALLS` key)
    over B rows of N heads, T queries, S keys of H features: its products over the blocks it
    visits; q, o, dq and their like read or written once, the other side's blocks once per
    block they meet, float32 statistics (log-sum-exp, dO.O) beside them."""
    impl, pass_, products = KERNEL_CALLS[call]
    bq, bk = _blocks(impl, pass_, T, S)
    d = visited_fraction(T, S, bq, bk, causal)
    flops = products * 2.0 * B * N * T * S * H * d
    q_side, kv_side, stats = B * N * T * H * itemsize, B * N * S * H * itemsize, B * N * T * 4
    q_blocks, kv_blocks = -(-T // bq), -(-S // bk)
    traffic = {
        "fwd": 2 * q_side + 2 * kv_side * q_blocks * d + stats,
        "dq": 3 * q_side + 2 * kv_side * q_blocks * d + 2 * stats,
        "dkv": 4 * kv_side + (2 * q_side + 2 * stats) * kv_blocks * d,
    }
    traffic["bwd"] = traffic["dq"] + traffic["dkv"]
    return flops, float(traffic[pass_])
