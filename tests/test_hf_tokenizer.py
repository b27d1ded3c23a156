"""Hugging Face tokenizers as a run's tokenizer: a GPT-2-style byte-level BPE and a BERT-style
WordPiece `tokenizer.json`, built here with the `tokenizers` library, with their special tokens
where GPT-2 and BERT have them (`<|endoftext|>` last; [PAD] 0, [UNK] [CLS] [SEP] [MASK] 100-103),
so that no code can get by on the project's own layout (specials at 0-6)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from conftest import run_command, train_command, write_corpus
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from train.data import packing
from train.inference.load import load_trained
from train.objectives import MaskedLM
from train.tokenizer.files import load_tokenizer
from train.tokenizer.hf import HFTokenizer

EOT = "<|endoftext|>"
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def _lines(glob_pattern: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(glob_pattern)):
        with open(path) as f:
            out += [line for line in f.read().split("\n") if line.strip()]
    return out


def gpt2_tokenizer(lines: list[str], path: str, vocab_size: int = 400) -> str:
    """GPT-2's recipe: byte-level pre-tokenizer and decoder, BPE, `<|endoftext|>` added last."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[]
    )
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens([EOT])
    tok.save(path)
    return path


def bert_tokenizer(lines: list[str], path: str) -> str:
    """BERT's recipe: lowercasing normaliser, WordPiece over a vocabulary laid out as BERT's
    (specials at 0 and 100-103), and the [CLS] ... [SEP] post-processor (which a run must not use)."""
    words = sorted({w for line in lines for w in normalizers.BertNormalizer().normalize_str(line).split()})
    chars = sorted({c for w in words for c in w})
    pieces = [p for p in words + chars + [f"##{c}" for c in chars] if p not in BERT_SPECIALS]
    vocab = dict(BERT_SPECIALS)
    free = (i for i in range(len(pieces) + 200) if i not in BERT_SPECIALS.values())
    vocab.update({p: next(free) for p in dict.fromkeys(pieces)})
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    tok.add_special_tokens(list(BERT_SPECIALS))
    tok.save(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_files=40)


@pytest.fixture(scope="module")
def tokenizers_(corpus, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tokenizers")
    lines = _lines(corpus)
    os.makedirs(folder / "gpt2")
    os.makedirs(folder / "bert")
    return {
        "gpt2": gpt2_tokenizer(lines, str(folder / "gpt2" / "tokenizer.json")),
        "bert": bert_tokenizer(lines, str(folder / "bert" / "tokenizer.json")),
    }


def test_the_special_roles_come_from_the_tokenizer(tokenizers_):
    gpt2 = load_tokenizer(tokenizers_["gpt2"])
    eot = gpt2.vocab_size - 1
    assert gpt2.token(eot) == EOT
    assert (gpt2.specials.bos, gpt2.specials.eos, gpt2.specials.pad) == (eot, eot, eot)
    assert gpt2.specials.mask is None and gpt2.specials.ids == (eot,)
    bert = load_tokenizer(tokenizers_["bert"])
    sp = bert.specials
    assert (sp.pad, sp.unk, sp.cls, sp.sep, sp.mask) == (0, 100, 101, 102, 103)
    assert (sp.bos, sp.eos) == (101, 102)  # a document is framed [CLS] ... [SEP], as BERT's
    assert sp.ids == (0, 100, 101, 102, 103)


def test_a_roles_file_beside_the_tokenizer_overrides_the_names(tokenizers_, tmp_path):
    tok = load_tokenizer(tokenizers_["bert"])
    tok.save(str(tmp_path / "tokenizer.json"))  # writes the roles beside it
    with open(tmp_path / "special_tokens_map.json") as f:
        assert json.load(f)["mask_token"] == "[MASK]"
    with open(tmp_path / "special_tokens_map.json", "w") as f:
        json.dump({"bos_token": "[SEP]", "eos_token": "[CLS]"}, f)
    swapped = load_tokenizer(str(tmp_path / "tokenizer.json")).specials
    assert (swapped.bos, swapped.eos, swapped.mask) == (102, 101, 103)


def test_decoding_round_trips_and_bytes_per_token_are_exact_for_byte_level(tokenizers_, corpus):
    gpt2, bert = (load_tokenizer(tokenizers_[k]) for k in ("gpt2", "bert"))
    texts = _lines(corpus)[:50] + ["naïve café — 東京 ok", "  two  spaces\tand a tab"]
    table = gpt2.bytes_per_token()
    for text, ids in zip(texts, gpt2.encode(texts), strict=True):
        assert gpt2.decode(ids) == text
        assert int(table[ids].sum()) == len(text.encode("utf-8"))
    assert table[gpt2.specials.ids].sum() == 0
    # WordPiece lowercases and splits off punctuation: round trip on normalised words, and no
    # bytes-per-token table (bits per byte is not reported rather than wrong).
    words = [" ".join(line.lower().replace(".", "").split()) for line in _lines(corpus)[:50]]
    for text, ids in zip(words, bert.encode(words), strict=True):
        assert bert.decode(ids) == text
        assert not set(ids) & set(bert.specials.ids)  # no [CLS]/[SEP] from the post-processor
    assert bert.bytes_per_token() is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_mlm_never_selects_or_draws_a_special_token(tokenizers_, corpus, name):
    tok = load_tokenizer(tokenizers_[name])
    sp = tok.specials
    if sp.mask is None:  # GPT-2 has no mask token: lend it id 0 for this test only
        sp = dataclasses.replace(sp, mask=0, ids=(0, *sp.ids))
    docs = tok.encode(_lines(corpus)[:200])
    tokens, seg = packing.pack(docs, 64, sp)
    # Every document framed by the tokenizer's ids (GPT-2's one id frames both ends).
    assert (tokens[seg > 0] == sp.eos).sum() == len(docs) * (2 if sp.bos == sp.eos else 1)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": packing.positions_from_segments(seg)}
    special = np.asarray(sp.ids)
    for mask_frac, random_frac in ((1.0, 0.0), (0.0, 1.0)):
        mlm = MaskedLM(tok.vocab_size, rate=0.5, mask_frac=mask_frac, random_frac=random_frac, specials=sp)
        out = jax.device_get(mlm.transform(batch, jax.random.PRNGKey(0)))
        selected = out["targets"][out["weights"]]
        assert len(selected) > 100 and not np.isin(selected, special).any()
        written = out["inputs"][np.arange(len(tokens))[:, None], out["mlm_positions"]][out["weights"]]
        if mask_frac == 1.0:
            assert (written == sp.mask).all()
        else:  # random replacements are drawn from the regular ids only
            assert not np.isin(written, special).any() and (written != selected).mean() > 0.9


def _files(workdir: str) -> set[str]:
    return set(os.listdir(workdir))


@pytest.mark.slow
@pytest.mark.parametrize("objective,name", [("clm", "gpt2"), ("mlm", "bert")])
def test_a_short_run_trains_on_the_tokenizer_and_serves_strings(
    objective, name, tokenizers_, corpus, tmp_path
):
    workdir = str(tmp_path / "run")
    overrides = {
        "dataset": f"text:{corpus}",
        "tokenizer.path": tokenizers_[name],
        "data_cache_dir": str(tmp_path / "cache"),
        "num_train_steps": 20,
        "checkpoint_every_steps": 20,
    }
    if objective == "mlm":
        overrides.update({"model.embed_norm": True, "model.head": "bert", "model.activation": "gelu"})
    result = run_command(train_command(workdir, objective, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"tokenizer.json", "special_tokens_map.json"} <= _files(workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    assert evals and np.isfinite(evals[-1]["loss"])
    # Bits per byte needs exact bytes per token: byte-level BPE has them.
    assert ("bits_per_byte" in evals[-1]) == (objective == "clm")

    trained = load_trained(workdir)
    assert isinstance(trained.tokenizer, HFTokenizer)
    assert trained.tokenizer.specials == load_tokenizer(tokenizers_[name]).specials
    if objective == "clm":
        out = trained.generate(["the", "a"], max_new_tokens=8, temperature=0.0)
        assert len(out) == 2 and all(isinstance(s, str) for s in out)
    else:
        (row,) = trained.fill_mask(["the [MASK] is here"], top_k=3)
        assert len(row) == 1 and len(row[0]) == 3
    assert np.isfinite(trained.score(["the cat", "a dog"])).all()


@pytest.mark.slow
def test_continued_pretraining_from_a_gpt2_directory_uses_its_tokenizer_and_exports_it(
    tokenizers_, corpus, tmp_path
):
    """The README's path: a local GPT-2 directory (weights and tokenizer.json) -> a run on new
    text -> an exported directory whose tokenizer transformers loads and encodes as ours."""
    from conftest import micro_config
    from hub_models import param_dict, random_transformer, write_hub_dir

    from models import registry
    from train.hf.config import hf_config
    from train.hf.weights import to_hf
    from train.inference.load import load_hf

    transformers = pytest.importorskip("transformers")
    options = {"model.position": "learned", "model.norm_eps": 1e-5}
    tok = load_tokenizer(tokenizers_["gpt2"])
    cfg = registry.model_config(micro_config(**options), tok.vocab_size)
    hub = write_hub_dir(
        tmp_path / "gpt2",
        to_hf(param_dict(random_transformer(cfg, seed=1)), cfg, "gpt2"),
        hf_config(cfg, "gpt2"),
    )
    shutil.copyfile(tokenizers_["gpt2"], os.path.join(hub, "tokenizer.json"))
    assert isinstance(load_hf(hub).tokenizer, HFTokenizer)

    workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
    overrides = {
        "dataset": f"text:{corpus}",
        "data_cache_dir": str(tmp_path / "cache"),
        "num_train_steps": 10,
    }
    result = run_command(train_command(workdir, init_from=f"hf:{hub}", **options, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(workdir, "tokenizer.json"), "rb") as a, open(tokenizers_["gpt2"], "rb") as b:
        assert a.read() == b.read()

    exported = run_command([sys.executable, "-m", "train.hf.export", f"--workdir={workdir}", f"--out={out}"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert {"tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"} <= _files(out)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    text = _lines(corpus)[3]
    assert theirs(text)["input_ids"] == tok.encode([text])[0]
    assert theirs.eos_token == EOT and theirs.bos_token == EOT
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["eos_token_id"] == tok.vocab_size - 1
