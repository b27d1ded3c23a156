"""The encoder-decoder and its baselines (C10, C11): who sees whom, caches, tasks, bottleneck, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base, seq2seq
from models import registry
from models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from models.layer_scan import stack_layer_params
from models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig
from models.masks import make_attention_mask, make_cross_mask
from models.seq2seq_decode import greedy_decode
from models.transformer import TransformerConfig
from train import step as step_lib
from train.data.seq2seq_tasks import make_examples
from train.data.span_corruption import corrupt
from train.data.vocab import BOS_ID, EOS_ID, NUM_SPECIAL
from train.objectives import Seq2Seq

V, S, T = 48, 10, 9


def _encdec(share: bool = False, position: str = "rotary", layers: int = 2) -> EncoderDecoder:
    stack = TransformerConfig(
        vocab_size=V, d_model=32, num_heads=4, num_layers=layers, mlp_dim=64, max_len=16, position=position
    )
    return EncoderDecoder(EncoderDecoderConfig(stack, share_embeddings=share), rngs=nnx.Rngs(0))


def _batch(lengths=(6, 4)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sources = [rng.permutation(20)[:n] for n in lengths]  # distinct symbols within a row
    return make_examples("reverse", sources, max(S, T))


def _masks(batch):
    return (
        make_attention_mask("bidirectional", jnp.asarray(batch["src_segment_ids"])),
        make_attention_mask("causal", jnp.asarray(batch["segment_ids"])),
        make_cross_mask(jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["src_segment_ids"])),
    )


def _embedding_grads(model, batch, side: str, row: int, t: int, *, output: str) -> np.ndarray:
    """|d out[row, t] / d embedding row of each token of that row's `side` sequence|, per position."""
    src_mask, mask, cross = _masks(batch)
    graphdef, params = nnx.split(model)
    probe = jax.random.normal(jax.random.PRNGKey(1), (32,))

    def out(params):
        m = nnx.merge(graphdef, params)
        memory = m.encode_source(batch["src_tokens"], src_mask, batch["src_positions"])
        if output == "encoder":
            return memory[row, t] @ probe
        return m.decode(memory, batch["tokens"], mask, batch["positions"], cross)[row, t] @ probe

    grads = jax.grad(out)(params)
    table = np.abs(np.asarray(grads[side]["embed"]["embedding"].value)).sum(-1)
    tokens = batch["src_tokens" if side == "encoder" else "tokens"][row]
    return table[tokens]


def test_encoder_is_bidirectional_and_decoder_causal_by_gradients():
    model, batch = _encdec(), _batch()
    n = int(batch["src_segment_ids"][0].sum())
    for t in range(n):  # every source token reaches every encoder output
        assert np.all(_embedding_grads(model, batch, "encoder", 0, t, output="encoder")[:n] > 0)
    m = int(batch["segment_ids"][0].sum())
    for t in range(m):  # decoder output t sees target tokens 0..t only
        g = _embedding_grads(model, batch, "decoder", 0, t, output="decoder")
        assert np.all(g[: t + 1] > 0) and np.all(g[t + 1 : m] == 0)


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_cross_attention_reaches_every_real_encoder_position_and_no_padding(position):
    model, batch = _encdec(position=position), _batch(lengths=(4, 6))
    n = int(batch["src_segment_ids"][0].sum())
    # Decoder output 0 has read only BOS: whatever it knows of the source came through cross-attention.
    g = _embedding_grads(model, batch, "encoder", 0, 0, output="decoder")
    assert np.all(g[:n] > 0)
    # Padding (id 0, never a source token) is masked out of every attention that reads it.
    assert set(batch["src_tokens"][0, n:]) == {0} and 0 not in set(batch["src_tokens"][0, :n])
    assert g[n:].max() == 0.0


def test_shared_embeddings_are_one_parameter():
    shared, separate = _encdec(share=True), _encdec(share=False)
    n_shared = sum(x.size for x in jax.tree.leaves(nnx.state(shared, nnx.Param)))
    n_separate = sum(x.size for x in jax.tree.leaves(nnx.state(separate, nnx.Param)))
    assert n_separate - n_shared == V * 32
    assert shared.encoder.embed is shared.decoder.embed


def test_scan_over_layers_gives_the_same_encoder_decoder():
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    objective = Seq2Seq()
    mb = objective.transform(batch)
    stack = TransformerConfig(vocab_size=V, d_model=32, num_heads=4, num_layers=3, mlp_dim=64, max_len=16)
    loop = EncoderDecoder(EncoderDecoderConfig(stack), rngs=nnx.Rngs(0))
    scan = EncoderDecoder(
        EncoderDecoderConfig(dataclasses.replace(stack, scan_layers=True)), rngs=nnx.Rngs(0)
    )
    _, params, rest = step_lib.split_model(loop)
    scan_graphdef, _, _ = step_lib.split_model(scan)
    scan = nnx.merge(scan_graphdef, stack_layer_params(params), stack_layer_params(rest))
    expected = np.asarray(objective.logits(loop, mb, "causal"))
    np.testing.assert_allclose(
        np.asarray(objective.logits(scan, mb, "causal")), expected, atol=1e-5, rtol=1e-5
    )
    # The decoding cache reads layer i of the stack as a block: prefill logits match too.
    memory = scan.encode_source(
        mb["src_tokens"], make_attention_mask("bidirectional", mb["src_segment_ids"]), mb["src_positions"]
    )
    cache = scan.init_cache(memory, mb["src_segment_ids"] != 0, T)
    B = mb["inputs"].shape[0]
    logits, _ = scan.extend(mb["inputs"][:, :T], mb["positions"][:, :T], jnp.ones((B, T), bool), cache)
    real = np.asarray(mb["segment_ids"][:, :T] != 0)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[:, :T][real], atol=2e-5, rtol=1e-5)


def test_cached_decoding_equals_the_parallel_decoder():
    model, batch = _encdec(), _batch()
    objective = Seq2Seq()
    mb = objective.transform({k: jnp.asarray(v) for k, v in batch.items()})
    parallel = np.asarray(objective.logits(model, mb, "causal"))
    src_mask, _, _ = _masks(batch)
    memory = model.encode_source(batch["src_tokens"], src_mask, batch["src_positions"])
    cache = model.init_cache(memory, jnp.asarray(batch["src_segment_ids"] != 0), T + 1)
    B = batch["tokens"].shape[0]
    # A two-token prefill, then one token at a time (teacher forcing).
    logits, cache = model.extend(
        batch["tokens"][:, :2], batch["positions"][:, :2], jnp.ones((B, 2), bool), cache
    )
    steps = [np.asarray(logits)]
    for t in range(2, T):
        logits, cache = model.extend(
            batch["tokens"][:, t : t + 1], jnp.full((B, 1), t), jnp.ones((B, 1), bool), cache
        )
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, 1)
    real = batch["segment_ids"][:, :T] != 0
    np.testing.assert_allclose(cached[real], parallel[:, :T][real], atol=2e-5, rtol=1e-5)


def test_greedy_decoding_with_the_caches_equals_recomputing_the_prefix():
    model, batch = _encdec(layers=1), _batch()
    kw = dict(bos_id=BOS_ID, eos_id=EOS_ID)
    cached = greedy_decode(model, batch, 8, use_cache=True, **kw)
    recomputed = greedy_decode(model, batch, 8, use_cache=False, **kw)
    np.testing.assert_array_equal(cached, recomputed)
    assert cached.shape == (2, 8)


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_task_targets_are_right(task):
    rng = np.random.default_rng(1)
    sources = [rng.integers(0, 32, n) for n in (8, 13, 1)]
    ex = make_examples(task, sources, 16)
    for i, x in enumerate(sources):
        n = len(x)
        np.testing.assert_array_equal(ex["src_tokens"][i, :n], x + NUM_SPECIAL)
        assert np.all(ex["src_tokens"][i, n:] == 0) and ex["src_segment_ids"][i].sum() == n
        tgt = ex["tokens"][i, : n + 2]
        assert tgt[0] == BOS_ID and tgt[-1] == EOS_ID and np.all(ex["segment_ids"][i, n + 2 :] == 0)
        y = tgt[1:-1] - NUM_SPECIAL
        expected = {"copy": x, "reverse": x[::-1], "sort": np.sort(x)}[task]
        np.testing.assert_array_equal(y, expected)
        if task == "sort":
            assert np.all(np.diff(y) >= 0) and sorted(y.tolist()) == sorted(x.tolist())


def test_train_and_eval_lengths_follow_the_config():
    c = base.override(seq2seq.get_config("tiny"), {"seq2seq.min_len": 3, "seq2seq.max_len": 9, "seq_len": 11})
    c = base.override(c, {"seq2seq.eval_lengths": (4, 9), "seq2seq.eval_examples": 5, "model.max_len": 11})
    from train.data.sources import make_source

    source = make_source(c, "/tmp")
    lengths = np.concatenate([next(it)["src_segment_ids"].sum(1) for it in [source.train_iterator()] * 20])
    assert lengths.min() == 3 and lengths.max() == 9
    by_length = source.eval_examples_by_length()
    assert {n: ex["src_segment_ids"].sum(1).tolist() for n, ex in by_length.items()} == {
        4: [4] * 5,
        9: [9] * 5,
    }


def test_span_corruption_round_trips_and_hits_its_statistics():
    rng = np.random.default_rng(0)
    noise, spans, n_total = [], [], 0
    for _ in range(200):
        tokens = rng.integers(10, 100, 100).astype(np.int32)
        inputs, targets = corrupt(tokens, rng, 0.15, 3.0, first_sentinel=1000)
        # Put each span back where its sentinel stands: the original comes back.
        pieces = np.split(targets, np.flatnonzero(targets >= 1000))[1:]
        fill = {int(p[0]): p[1:] for p in pieces}
        rebuilt = np.concatenate([fill[int(t)] if t >= 1000 else [t] for t in inputs])
        np.testing.assert_array_equal(rebuilt, tokens)
        noise.append(sum(len(p) - 1 for p in pieces))
        spans += [len(p) - 1 for p in pieces]
        n_total += len(tokens)
    assert sum(noise) / n_total == pytest.approx(0.15, abs=0.005)
    assert np.mean(spans) == pytest.approx(3.0, abs=0.1)


def _lstm(attention: bool) -> LSTMSeq2Seq:
    return LSTMSeq2Seq(LSTMSeq2SeqConfig(V, 24, 2, attention=attention), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("attention", [False, True])
def test_lstm_bottleneck_decoder_depends_on_the_input_only_through_the_final_state(attention):
    model, batch = _lstm(attention), _batch()
    src_mask, mask, cross = _masks(batch)
    memory = model.encode_source(batch["src_tokens"], src_mask)

    graphdef, params, rest = step_lib.split_model(model)

    def loss(params, memory):  # as in the train step: the model is rebuilt from arrays under the trace
        decoder = nnx.merge(graphdef, params, rest)
        return decoder.decode(memory, batch["tokens"], mask, batch["positions"], cross).sum()

    g = jax.grad(loss, argnums=1)(params, memory)
    final_norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g["final"]))
    states_norm = float(jnp.abs(g["states_BSD"]).sum())
    assert final_norm > 0
    if attention:
        assert states_norm > 0
    else:
        assert states_norm == 0.0
        # Any other encoder states, same final state: the same decoder output.
        scrambled = {
            **memory,
            "states_BSD": jax.random.normal(jax.random.PRNGKey(2), memory["states_BSD"].shape),
        }
        np.testing.assert_array_equal(loss(params, scrambled), loss(params, memory))


def test_lstm_final_state_is_taken_at_the_last_real_token():
    model, batch = _lstm(False), _batch(lengths=(4, 6))
    src_mask, _, _ = _masks(batch)
    padded = model.encode_source(batch["src_tokens"], src_mask)["final"]
    trimmed_batch = {k: v[:1, :4] for k, v in batch.items() if k.startswith("src_")}
    trimmed = model.encode_source(trimmed_batch["src_tokens"], _masks({**batch, **trimmed_batch})[0][:1])[
        "final"
    ]
    for (c_pad, h_pad), (c_cut, h_cut) in zip(padded, trimmed, strict=True):
        np.testing.assert_allclose(np.asarray(h_pad[0]), np.asarray(h_cut[0]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(c_pad[0]), np.asarray(c_cut[0]), atol=1e-6)


@pytest.mark.parametrize("arch", ["encdec", "lstm_attention"])
def test_a_tiny_model_overfits_one_batch(arch):
    c = base.override(
        seq2seq.get_config("tiny"),
        {
            "model.arch": arch,
            "model.d_model": 32,
            "model.num_heads": 2,
            "model.mlp_dim": 64,
            "model.num_layers": 1,
        },
    )
    c = base.override(c, {"optim.learning_rate": 1e-2, "optim.warmup_steps": 10, "num_train_steps": 150})
    batch = {
        k: jnp.asarray(v) for k, v in make_examples("reverse", [np.arange(8) % 5, np.arange(6)], 66).items()
    }
    cfg = registry.model_config(c, NUM_SPECIAL + 32)
    tx = step_lib.make_optimizer(c)
    graphdef, _ = step_lib.abstract_model(cfg)
    state = step_lib.init_state(cfg, tx, 0)
    step = jax.jit(step_lib.make_train_step(graphdef, tx, Seq2Seq(), "causal", step_lib.make_schedule(c)))
    for _ in range(150):
        state, metrics = step(state, batch)
    assert float(metrics["loss"]) < 0.05 and float(metrics["accuracy"]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["seq2seq:sort", "span:hmm"])
def test_seq2seq_run_resumes_to_the_same_result(dataset, tmp_path, capsys):
    from train.trainer import train_and_evaluate

    overrides = {
        "dataset": dataset,
        "model.d_model": 32,
        "model.num_heads": 2,
        "model.mlp_dim": 64,
        "model.num_layers": 1,
        "seq2seq.max_len": 14,
        "seq2seq.eval_lengths": (8, 14),
        "seq2seq.eval_examples": 8,
        "seq_len": 16,
        "model.max_len": 16,
        "batch_size": 8,
        "hmm.num_symbols": 16,
        "hmm.eval_sequences": 16,
        "num_train_steps": 30,
        "log_every_steps": 10,
        "eval_every_steps": 10,
        "checkpoint_every_steps": 10,
        "optim.warmup_steps": 5,
    }
    straight = train_and_evaluate(base.override(seq2seq.get_config("tiny"), overrides), str(tmp_path / "a"))
    workdir = str(tmp_path / "b")
    train_and_evaluate(base.override(seq2seq.get_config("tiny"), overrides), workdir)
    for step in ("20", "30"):  # as if killed just after step 10's checkpoint
        shutil.rmtree(os.path.join(workdir, "checkpoints", step))
    resumed = train_and_evaluate(base.override(seq2seq.get_config("tiny"), overrides), workdir)
    assert resumed["steps_this_session"] == 20
    assert resumed["eval"] == straight["eval"]
    assert "exact_match" in straight["eval"]
    assert json.load(open(os.path.join(workdir, "config.json")))["resolved"]["num_params"] > 0
    if dataset == "seq2seq:sort":  # the trained run decodes from the command line
        from experiments import sample

        sample.main(["--workdir", workdir, "--prompt", "s3 s1 s2", "--prompt", "s5", "--max_new_tokens", "6"])
        lines = [line for line in capsys.readouterr().out.splitlines() if " -> " in line]
        assert [line.split(" -> ")[0] for line in lines] == ["s3 s1 s2", "s5"]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"dataset": "hmm"}, "dataset='hmm'"),
        ({"model.arch": "transformer"}, "model.arch='transformer'"),
        ({"dataset": "span:seq2seq:copy"}, "dataset='span:seq2seq:copy'"),
        ({"dataset": "seq2seq:shuffle"}, "dataset='seq2seq:shuffle'"),
        ({"seq2seq.max_len": 100}, "seq2seq.max_len=100"),
        ({"mask": "bidirectional"}, "mask='bidirectional'"),
    ],
)
def test_a_seq2seq_config_that_cannot_work_is_refused_by_field(overrides, field):
    from models.errors import ConfigError
    from train.config_checks import validate

    with pytest.raises(ConfigError, match=re.escape(field)):
        validate(base.override(seq2seq.get_config("tiny"), overrides))
