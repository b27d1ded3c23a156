"""A corpus as an ordered list of shards, each read on its own, so that the token cache can be
built in bounded memory, in parallel and resumably (train/data/token_cache.py).

Text (`text:GLOB`): the files sorted by path, grouped into shards of about `SHARD_BYTES` (a
larger file is a shard of its own and is read whole). TFDS: index ranges of a prepared split.
Documents keep one global order, shard by shard, so the documents held out for eval (text) are
the same pure function of a document's index as when the corpus was read whole.

A shard's `role` says where its documents go: "split" (text: train or eval by `HeldOut`),
"train" or "eval" (a TFDS split).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from models.errors import ConfigError
from train.data import text

SHARD_BYTES = 8 * 2**20
TFDS_SHARD_RECORDS = 20_000


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of the token cache's encoding work: a group of files, or a record range of a TFDS
    split, with its role (split by `eval_fraction`, train only, or eval only)."""

    role: str  # "split" | "train" | "eval"
    kind: str  # "text" | "tfds"
    # text: (split_by, path, path, ...); tfds: (name, split, data_dir, feature, start, stop)
    spec: tuple
    nbytes: int = 0  # text: the files' size; tfds: unknown (0)
    # Another host's shard in a per-host build: encode only these (held-out) documents, of `docs`.
    keep: tuple[int, ...] | None = None
    docs: int = -1


def host_part(shards: list[Shard], chars: list[np.ndarray], eval_fraction: float, host: int, hosts: int):
    """The shards one host of `hosts` builds when the hosts share no filesystem: its own shards
    (every `hosts`-th, from `host`) whole, and of every other shard only the held-out documents,
    so each host has its part of the train rows and all the eval rows. `chars[i]`:
    `document_chars(shards[i])` (the held-out split needs every shard's document count)."""
    held = _held_out(shards, chars, eval_fraction)
    part = []
    for i, s in enumerate(shards):
        if i % hosts == host:
            part.append(s)
        elif s.role == "split":
            keep = tuple(int(k) for k in np.flatnonzero(held[i]))
            part.append(dataclasses.replace(s, keep=keep, docs=len(chars[i])))
        elif s.role == "eval":
            part.append(s)
    return part


def _held_out(shards: list[Shard], chars: list[np.ndarray], eval_fraction: float) -> list[np.ndarray]:
    held = [np.zeros(len(c), bool) for c in chars]
    split = [i for i, s in enumerate(shards) if s.role == "split"]
    if split:
        total_docs = sum(len(chars[i]) for i in split)
        if total_docs == 0:
            raise ConfigError(text.no_text_message(sum(len(shards[i].spec) - 1 for i in split)))
        rule = text.HeldOut(total_docs, eval_fraction)
        for i in split:
            held[i] = rule.take(len(chars[i]))
    return held


def text_shards(paths: list[str], split_by: str, shard_bytes: int | None = None) -> list[Shard]:
    """The files in order, grouped into shards of about `shard_bytes` (a file is never split)."""
    shard_bytes = shard_bytes or SHARD_BYTES
    shards, group, size = [], [], 0
    for path in paths:
        n = os.path.getsize(path)
        if group and size + n > shard_bytes:
            shards.append(Shard("split", "text", (split_by, *group), size))
            group, size = [], 0
        group.append(path)
        size += n
    if group:
        shards.append(Shard("split", "text", (split_by, *group), size))
    return shards


def tfds_shards(role: str, name: str, split: str, data_dir: str, feature: str, records: int) -> list[Shard]:
    return [
        Shard(role, "tfds", (name, split, data_dir, feature, start, min(start + TFDS_SHARD_RECORDS, records)))
        for start in range(0, records, TFDS_SHARD_RECORDS)
    ]


def iter_documents(shard: Shard) -> Iterator[tuple[list[str], text.ReadProblems]]:
    """The shard's documents in order, file by file (or all at once for TFDS), each part with
    what reading it found (invalid UTF-8 replaced, a binary file skipped)."""
    if shard.kind == "text":
        split_by, *paths = shard.spec
        for path in paths:
            yield text.read_file(path, split_by)
    else:
        from train.data import tfds

        yield tfds.read_range(*shard.spec), text.ReadProblems()


def read_documents(shard: Shard) -> tuple[list[str], text.ReadProblems]:
    """The shard's documents (only those of `keep`, if given) and what reading them found."""
    docs, problems = [], text.ReadProblems()
    for part, found in iter_documents(shard):
        docs += part
        problems.add(found)
    if shard.keep is not None:
        docs = [docs[k] for k in shard.keep]
    return docs, problems


def document_chars(shard: Shard) -> np.ndarray:
    """Characters of each document of the shard, in order (what the tokenizer sample needs)."""
    return np.asarray([len(d) for part, _ in iter_documents(shard) for d in part], np.int64)


def tokenizer_sample(
    shards: list[Shard], chars: list[np.ndarray], eval_fraction: float, max_chars: int
) -> Iterator[str]:
    """Training documents for the tokenizer, by a fixed rule over the whole corpus: if all train
    documents hold at most `max_chars` characters, all of them in order (held-out ones never);
    otherwise each shard gives its first train documents up to an equal share of `max_chars`.
    `chars[i]`: `document_chars(shards[i])`."""
    held = _held_out(shards, chars, eval_fraction)
    used = [i for i, s in enumerate(shards) if s.role != "eval"]
    total = sum(int(chars[i][~held[i]].sum()) for i in used)
    quota = max_chars if total <= max_chars else max_chars / max(len(used), 1)
    for i in used:
        taken, k = 0, 0
        for part, _ in iter_documents(shards[i]):
            for doc in part:
                if not held[i][k] and taken < quota:
                    yield doc
                    taken += len(doc)
                k += 1
            if taken >= quota:
                break
