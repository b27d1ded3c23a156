"""The token cache's integrity: each published file's size and SHA-256, written into meta.json at
build and checked whenever the cache is opened (one read of each file, which also finds the
largest token id); a damaged cache is moved aside, never deleted, and the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np

log = logging.getLogger(__name__)

_READ_BYTES = 16 * 2**20


def file_record(path: str) -> dict:
    """What a cache file is checked against when opened: its size and SHA-256."""
    with open(path, "rb") as f:
        return {"bytes": os.path.getsize(path), "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def damage(path: str, vocab_size: int) -> str | None:
    """What is wrong with the published cache `path`, naming the file, or None: a file missing,
    of another size, or whose bytes differ from the SHA-256 written with it (one read of each
    file; for token files the same read finds ids outside the vocabulary)."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        return f"meta.json cannot be read ({e})"
    for name, want in recorded.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return f"{file} is missing"
        if os.path.getsize(file) != want["bytes"]:
            return f"{file} has {os.path.getsize(file):,} bytes, {want['bytes']:,} when written"
        digest, top = _digest_and_max(file, np.dtype(recorded["token_dtype"]) if "tokens" in name else None)
        if digest != want["sha256"]:
            ids = (
                f"; it holds ids up to {top}, outside the vocabulary of {vocab_size}"
                if top >= vocab_size
                else ""
            )
            return f"{file} differs from the checksum written with it (its bytes changed since){ids}"
    if "files" not in recorded:
        return f"{path}/meta.json holds no checksums"
    return None


def _digest_and_max(file: str, dtype: np.dtype | None) -> tuple[str, int]:
    """The file's SHA-256 and, for a token file, its largest id (-1 otherwise)."""
    sha, top, first = hashlib.sha256(), -1, True
    with open(file, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            sha.update(chunk)
            if dtype is not None:
                body = chunk[_data_offset(chunk) if first else 0 :]
                body = body[: len(body) - len(body) % dtype.itemsize]
                if body:
                    top = max(top, int(np.frombuffer(body, dtype).max()))
            first = False
    return sha.hexdigest(), top


def _data_offset(head: bytes) -> int:
    """Where an .npy file's data starts (after its magic, version and header)."""
    size = int.from_bytes(head[8:10], "little") if head[6] == 1 else int.from_bytes(head[8:12], "little")
    return (10 if head[6] == 1 else 12) + size


def set_aside_if_damaged(path: str, vocab_size: int) -> None:
    """Moves a damaged cache to `PATH.damaged-TIME` (kept for a look, never deleted) with a warning
    naming what is wrong; the caller then rebuilds it from the corpus."""
    problem = damage(path, vocab_size)
    if problem is None:
        return
    aside = f"{path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process of the run moved it first
        return
    log.warning("token cache damaged: %s; moved to %s and rebuilt from the corpus", problem, aside)
