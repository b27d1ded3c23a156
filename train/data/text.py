"""Documents from local UTF-8 files (`dataset = "text:GLOB"`), with a held-out eval fraction.

Documents are whole files (`text.split_by = "file"`) or blocks separated by blank lines
(`"blank_lines"`). Which documents are held out is a pure function of their order (files
sorted by path), so every run on the same files gets the same split.
"""

from __future__ import annotations

import dataclasses
import glob
import json
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


# A file is taken for binary (a library, an image) and skipped when it holds a NUL byte or when
# more than this share of its bytes are invalid UTF-8; text never holds NUL.
BINARY_INVALID_SHARE = 0.3
_NAMED = 5  # files named in a warning; the rest are counted


@dataclasses.dataclass
class ReadProblems:
    """What reading text files found: files with invalid UTF-8 replaced by U+FFFD (path -> how
    many sequences) and files skipped as binary; `warn` names them."""

    replaced: dict[str, int] = dataclasses.field(default_factory=dict)
    binary: list[str] = dataclasses.field(default_factory=list)

    def add(self, other: ReadProblems) -> None:
        self.replaced.update(other.replaced)
        self.binary += other.binary

    def to_json(self) -> str:
        return json.dumps({"replaced": self.replaced, "binary": self.binary})

    @classmethod
    def from_json(cls, data: str) -> ReadProblems:
        return cls(**json.loads(data))

    def warn(self) -> None:
        if self.binary:
            log.warning(
                "skipped %d files that are not text (a NUL byte, or over %d%% invalid UTF-8): %s; "
                "narrow the dataset's glob to leave them out",
                len(self.binary),
                round(100 * BINARY_INVALID_SHARE),
                _names(self.binary),
            )
        if self.replaced:
            log.warning(
                "replaced %d invalid UTF-8 sequences with U+FFFD in %d files: %s",
                sum(self.replaced.values()),
                len(self.replaced),
                _names([f"{p} ({n})" for p, n in sorted(self.replaced.items())]),
            )


def _names(items: list[str]) -> str:
    shown = ", ".join(sorted(items)[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


def read_file(path: str, split_by: str) -> tuple[list[str], ReadProblems]:
    """(documents of one file, what was wrong with it): invalid UTF-8 sequences are replaced
    with U+FFFD and counted; a binary file gives no documents."""
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    n_bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    if b"\0" in raw or n_bad > BINARY_INVALID_SHARE * len(raw):
        return [], ReadProblems(binary=[path])
    parts = [text] if split_by == "file" else _BLANK_LINES.split(text)
    problems = ReadProblems(replaced={path: n_bad} if n_bad else {})
    return [p.strip("\n") for p in parts if p.strip()], problems


def check_split_by(split_by: str) -> None:
    if split_by not in SPLIT_MODES:
        raise ConfigError(f"text.split_by={split_by!r}: use one of {SPLIT_MODES}")


def read_documents(paths: list[str], split_by: str) -> list[str]:
    """Every document of `paths` (whole files or blank-line blocks), invalid UTF-8 replaced and
    binary files skipped, each named in a warning; `ConfigError` when none holds text."""
    check_split_by(split_by)
    docs, problems = [], ReadProblems()
    for path in paths:
        file_docs, found = read_file(path, split_by)
        problems.add(found)
        docs += file_docs
    problems.warn()
    if not docs:
        raise ConfigError(no_text_message(len(paths)))
    return docs


def no_text_message(num_files: int) -> str:
    return f"the {num_files} files of the text dataset hold no text (empty or whitespace only)"


class HeldOut:
    """Which documents are held out for eval, decided in corpus order, part by part.

    Document i is held out iff the i-th draw of `default_rng(seed).random()` is below
    `eval_fraction`; if that holds out none, the last document is; if all, the first is not.
    The fix-ups need the total, so the draws are made twice (once to see them), in chunks:
    memory does not grow with the corpus, and the split equals drawing all at once.
    """

    _CHUNK = 1 << 20

    def __init__(self, total: int, eval_fraction: float, seed: int = 0):
        if total < 2:
            raise ConfigError(
                "the text dataset has a single document, so none can be held out for eval; use "
                "text.split_by='blank_lines' or add files"
            )
        self.total, self._fraction, self._seed = total, eval_fraction, seed
        rng, any_held, all_held = np.random.default_rng(seed), False, True
        for start in range(0, total, self._CHUNK):
            held = rng.random(min(self._CHUNK, total - start)) < eval_fraction
            any_held, all_held = any_held or bool(held.any()), all_held and bool(held.all())
        self._force_last, self._free_first = not any_held, all_held
        self._rng, self._next = np.random.default_rng(seed), 0

    def take(self, n: int) -> np.ndarray:
        """Held-out flags `[n]` of the next `n` documents."""
        held = self._rng.random(n) < self._fraction
        first, self._next = self._next, self._next + n
        if self._force_last and first <= self.total - 1 < self._next:
            held[self.total - 1 - first] = True
        if self._free_first and first == 0 and n:
            held[0] = False
        return held


def split_documents(docs: list[str], eval_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, eval): a fixed pseudo-random `eval_fraction` of the documents, at least one each."""
    held = HeldOut(len(docs), eval_fraction, seed).take(len(docs))
    train = [d for d, h in zip(docs, held, strict=True) if not h]
    return train, [d for d, h in zip(docs, held, strict=True) if h]
