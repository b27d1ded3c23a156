"""Seq2seq data and runs (C10, C11): task targets, span corruption, overfitting, resume, config errors."""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, seq2seq
from models import registry
from train.data.seq2seq_tasks import make_examples
from train.data.span_corruption import corrupt
from train.loop import step as step_lib
from train.objectives import Seq2Seq
from train.tokenizer.vocab import BOS_ID, EOS_ID, NUM_SPECIAL


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


@pytest.mark.slow
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


def test_span_corruption_noise_does_not_depend_on_the_process_count(tmp_path):
    from train.data.sources import make_source

    c = base.override(seq2seq.get_config("tiny"), {"dataset": "span:hmm", "seq_len": 16, "batch_size": 8})
    source = make_source(c, str(tmp_path))
    one = source.train_iterator()
    reference = [next(one) for _ in range(2)]
    halves = [source.train_iterator(p, 2) for p in range(2)]
    for batch in reference:
        parts = [next(it) for it in halves]
        for key, value in batch.items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["seq2seq:sort", "span:hmm"])
def test_seq2seq_run_resumes_to_the_same_result(dataset, tmp_path, capsys):
    from train.loop.trainer import train_and_evaluate

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
        from experiments.tools import sample

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
