"""`python -m train.hf.export` on trained runs: a GPT-2-option GPT trained on text loads in
Hugging Face's `FlaxGPT2LMHeadModel` and its tokenizer in `AutoTokenizer` (encoding as the run
did), a BERT-option BERT in `FlaxBertForMaskedLM`, each with the project's logits within 1e-4; a
rotary run is refused naming `model.position`, and nothing is written."""

from __future__ import annotations

import glob
import os
import stat
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_command, train_command, write_corpus

from configs import FILES as CONFIGS
from models.masks import make_attention_mask
from train.inference.load import load_trained

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

# The exportable presets (configs/base.py) at the micro shapes.
RUNS = {"gpt2": ("clm", "gpt2_tiny"), "bert": ("mlm", "bert_tiny")}


def _export(workdir: str, out: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "train.hf.export", f"--workdir={workdir}", f"--out={out}"]
    return run_command(cmd)


TOKENIZER_FILES = ["special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]


@pytest.mark.parametrize("fam", ["gpt2", "bert"])
def test_an_exported_run_loads_in_hugging_face_with_the_same_logits(fam, tmp_path):
    """GPT-2 from a run on text files (its SentencePiece tokenizer exported too), BERT from a run
    on the embedded corpus (no tokenizer: ids are the card's rule)."""
    objective, variant = RUNS[fam]
    workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    text = {
        "dataset": f"text:{corpus}",
        "tokenizer.vocab_size": 512,
        "data_cache_dir": str(tmp_path / "cache"),
    }
    data = text if fam == "gpt2" else {}
    trained = run_command(train_command(workdir, objective, variant, num_train_steps=20, **data))
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = _export(workdir, out)
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = TOKENIZER_FILES if fam == "gpt2" else []
    assert sorted(os.listdir(out)) == sorted(["README.md", "config.json", "model.safetensors", *tokenizer])
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(out):  # readable by the other users of a shared machine
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o666 & ~umask, name
    assert result.stderr.strip() == "", result.stderr[-2000:]  # no Orbax INFO lines
    card = open(os.path.join(out, "README.md")).read()
    assert "final eval metrics" in card
    assert f"python -m train.main --config={CONFIGS[objective]}:{variant}" in card

    ours = load_trained(workdir)
    cls = transformers.FlaxGPT2LMHeadModel if fam == "gpt2" else transformers.FlaxBertForMaskedLM
    hf = cls.from_pretrained(out)
    vocab = ours.model.cfg.vocab_size
    tokens = np.random.default_rng(0).integers(0, vocab, (3, 16)).astype(np.int32)
    valid = np.ones_like(tokens)
    valid[1, 10:], valid[2, 4:] = 0, 0
    mask = make_attention_mask("causal" if fam == "gpt2" else "bidirectional", jnp.asarray(valid))
    positions = jnp.broadcast_to(jnp.arange(16), tokens.shape)
    got = np.asarray(ours.model(jnp.asarray(tokens), mask, positions))
    want = np.asarray(hf(input_ids=tokens, attention_mask=valid).logits)
    real = valid.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
    if fam == "gpt2":
        _auto_tokenizer_encodes_as_the_run(workdir, out, corpus)


def test_a_rotary_run_is_refused_naming_the_field_and_nothing_is_written(micro_run, tmp_path):
    out = str(tmp_path / "hf")
    result = _export(micro_run, out)
    assert result.returncode == 2
    assert "model.position='rotary' has no gpt2 equivalent (needs 'learned')" in result.stderr
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.startswith("hf")]


@pytest.mark.parametrize("case", ["no such workdir", "no checkpoint", "no such step"])
def test_a_missing_run_or_step_is_one_line_with_exit_2(case, micro_run, tmp_path):
    workdir = {"no such workdir": str(tmp_path / "nowhere"), "no checkpoint": str(tmp_path)}.get(
        case, micro_run
    )
    cmd = [sys.executable, "-m", "train.hf.export", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}"]
    result = run_command(cmd + (["--step=7"] if case == "no such step" else []))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    expected = (
        "has no step 7; it has [20, 30, 40]" if case == "no such step" else "no complete checkpoint under"
    )
    assert expected in lines[0]


def _auto_tokenizer_encodes_as_the_run(workdir: str, out: str, corpus: str) -> None:
    """A run on one's own text trains a SentencePiece model; its export holds a tokenizer.json
    that `AutoTokenizer` loads, encoding every document and hard case to the run's ids, framed
    `<bos> ... <eos>` as the run framed each document, and decoding them back."""
    from train.tokenizer.files import load_tokenizer
    from train.tokenizer.spm_to_hf import HARD_CASES

    run = load_tokenizer(os.path.join(workdir, "tokenizer.model"))
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    docs = [open(p).read() for p in sorted(glob.glob(corpus))]
    control = "<pad><bos><eos><unk>"  # transformers reads role tokens spelt out as the tokens
    assert theirs(control, add_special_tokens=False)["input_ids"] == [0, 1, 2, 3] != run.encode([control])[0]
    for doc in [*docs, *(c for c in HARD_CASES if "<bos>" not in c)]:
        (ids,) = run.encode([doc])
        assert theirs(doc, add_special_tokens=False)["input_ids"] == ids
        assert theirs(doc)["input_ids"] == [run.specials.bos, *ids, run.specials.eos]
        assert theirs.decode(ids) == doc
    assert theirs.mask_token_id == run.specials.mask and theirs.pad_token_id == run.specials.pad
