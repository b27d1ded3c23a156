"""One tokenizer per corpus, shared by GPT and BERT runs so their numbers compare.

A SentencePiece model (train/tokenizer/sentencepiece.py) trained once per (corpus, vocab size,
model type) into the data cache, or the file `tokenizer.path` names (a SentencePiece `.model`,
or a Hugging Face `tokenizer.json`: train/tokenizer/hf.py); copied into the workdir and reused
from there on resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable

from models.errors import ConfigError
from train.tokenizer.hf import HFTokenizer
from train.tokenizer.sentencepiece import SentencePieceTokenizer, train_tokenizer

log = logging.getLogger(__name__)


AnyTokenizer = SentencePieceTokenizer | HFTokenizer
FILENAMES = (HFTokenizer.filename, SentencePieceTokenizer.filename)  # the order `find_tokenizer` prefers


def find_tokenizer(folder: str) -> str | None:
    """The tokenizer file in `folder` (a workdir or a Hugging Face directory), if any."""
    return next((p for p in (os.path.join(folder, n) for n in FILENAMES) if os.path.exists(p)), None)


def load_tokenizer(path: str) -> AnyTokenizer:
    """A SentencePiece model, or a Hugging Face tokenizer.json (told apart by the name's end)."""
    fix = "replace the file (a truncated copy?) or name another with tokenizer.path"
    if path.endswith(".json"):
        try:
            return HFTokenizer.load(path)
        except ValueError as e:
            raise ConfigError(f"tokenizer {path}: {e}; {fix}") from e
    try:
        return SentencePieceTokenizer.load(path)
    except RuntimeError as e:  # SentencePiece's parse failure
        raise ConfigError(f"tokenizer {path}: not a SentencePiece model ({str(e)[:200]}); {fix}") from e


def configured_path(config) -> str:
    """`tokenizer.path`, else the tokenizer of an `init_from=hf:DIR` directory, else "" (train one)."""
    if config.tokenizer.path or not config.get("init_from", "").startswith("hf:"):
        return config.tokenizer.path
    return find_tokenizer(os.path.expanduser(config.init_from[len("hf:") :])) or ""


def corpus_tokenizer(
    workdir: str,
    cache_dir: str,
    corpus_key: str,
    documents: Iterable[str],
    *,
    vocab_size: int,
    model_type: str,
    max_chars: int,
    path: str = "",
) -> AnyTokenizer:
    """The run's tokenizer: the workdir's copy, else `path`, else the corpus cache, else trained."""
    in_workdir = find_tokenizer(workdir)
    if in_workdir:
        return load_tokenizer(in_workdir)
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"tokenizer.path={path!r} does not exist")
        tok = load_tokenizer(path)
    else:
        key = hashlib.sha256(f"{corpus_key}|{vocab_size}|{model_type}|{max_chars}".encode()).hexdigest()[:16]
        cached = os.path.join(cache_dir, "tokenizers", f"{key}.model")
        if os.path.exists(cached):
            tok = SentencePieceTokenizer.load(cached)
        else:
            log.info("training a %d-token %s tokenizer on the corpus", vocab_size, model_type)
            tok = train_tokenizer(documents, vocab_size, model_type, max_chars)
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            tok.save(cached)
    os.makedirs(workdir, exist_ok=True)
    tok.save(os.path.join(workdir, tok.filename))  # the bytes it was loaded from, written atomically
    return tok
