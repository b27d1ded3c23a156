"""Documents from local UTF-8 files (`dataset = "text:GLOB"`), with a held-out eval fraction.

Documents are whole files (`text.split_by = "file"`) or blocks separated by blank lines
(`"blank_lines"`). Which documents are held out is a pure function of their order (files
sorted by path), so every run on the same files gets the same split.
"""

from __future__ import annotations

import glob
import logging
import os
import re

import numpy as np

from models.errors import ConfigError

log = logging.getLogger(__name__)

SPLIT_MODES = ("file", "blank_lines")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def list_files(pattern: str) -> list[str]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ConfigError(
            f"dataset='text:{pattern}' matches no files; check the path, and quote the glob "
            "so the shell passes it through (--config.dataset=text:'DIR/*.txt')"
        )
    return paths


def read_documents(paths: list[str], split_by: str) -> list[str]:
    if split_by not in SPLIT_MODES:
        raise ConfigError(f"text.split_by={split_by!r}: use one of {SPLIT_MODES}")
    docs, bad_bytes, bad_files = [], 0, 0
    for path in paths:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", errors="replace")
        n_bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        if n_bad:
            bad_bytes, bad_files = bad_bytes + n_bad, bad_files + 1
        parts = [text] if split_by == "file" else _BLANK_LINES.split(text)
        docs += [p.strip("\n") for p in parts if p.strip()]
    if bad_bytes:
        log.warning("replaced %d invalid UTF-8 sequences with U+FFFD in %d files", bad_bytes, bad_files)
    if not docs:
        raise ConfigError(
            f"the {len(paths)} files of the text dataset hold no text (empty or whitespace only)"
        )
    return docs


def split_documents(docs: list[str], eval_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, eval): a fixed pseudo-random `eval_fraction` of the documents, at least one each."""
    if len(docs) < 2:
        raise ConfigError(
            "the text dataset has a single document, so none can be held out for eval; use "
            "text.split_by='blank_lines' or add files"
        )
    held = np.random.default_rng(seed).random(len(docs)) < eval_fraction
    if not held.any():
        held[-1] = True
    if held.all():
        held[0] = False
    train = [d for d, h in zip(docs, held, strict=True) if not h]
    return train, [d for d, h in zip(docs, held, strict=True) if h]
