"""SentencePiece tokenizers trained by this project: identity normalisation, no dummy prefix,
byte fallback, the project's special tokens at the ids of `train.tokenizer.vocab.DEFAULT`.

Decoding the ids of a string gives the string back exactly, and the UTF-8 bytes of a document
equal the sum of its tokens' byte lengths (`bytes_per_token`), which is what bits per byte needs.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from models.errors import ConfigError
from train.tokenizer.vocab import DEFAULT, NUM_SPECIAL, SPECIAL_TOKENS

log = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")
_ENCODE_BATCH_CHARS = 4 * 2**20  # bounds the Python lists SentencePiece returns
# SentencePiece skips longer inputs; documents are fed to it line by line.
_MAX_SENTENCE_BYTES = 4096


class SentencePieceTokenizer:
    """A SentencePiece model trained by this project (or given by `tokenizer.path`): exact round
    trip, byte fallback, the project's special tokens at the ids of `vocab.DEFAULT`."""

    filename = "tokenizer.model"
    specials = DEFAULT

    def __init__(self, model_proto: bytes):
        self.model_proto = self.serialized = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        for i, piece in enumerate(SPECIAL_TOKENS):
            if self._sp.id_to_piece(i) != piece:
                raise ValueError(f"tokenizer id {i} is {self._sp.id_to_piece(i)!r}, expected {piece!r}")

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        with open(path, "rb") as f:
            return cls(f.read())

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"  # the processes of a multi-process run may save at once
        with open(tmp, "wb") as f:
            f.write(self.model_proto)
        os.replace(tmp, path)

    @property
    def fingerprint(self) -> str:
        """Identifies the tokenization in data-cache keys."""
        return hashlib.sha256(self.model_proto).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def model_type(self) -> str:
        """ "unigram" or "bpe" (or another SentencePiece model type, lower case)."""
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(self.model_proto)
        return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=os.cpu_count() or 1)

    def encode_arrays(
        self, texts: Sequence[str], dtype: np.dtype, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts concatenated, as `dtype`; each text's length), without building
        more than one batch of Python lists at a time."""
        parts, lengths, batch, chars = [], [], [], 0
        for i, t in enumerate(texts):
            batch.append(t)
            chars += len(t)
            if chars >= _ENCODE_BATCH_CHARS or i == len(texts) - 1:
                ids = self._sp.encode(batch, out_type=int, num_threads=num_threads)
                n = np.fromiter(map(len, ids), np.int64, len(ids))
                parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype, int(n.sum())))
                lengths.append(n)
                batch, chars = [], 0
        if not parts:
            return np.zeros(0, dtype), np.zeros(0, np.int64)
        return np.concatenate(parts), np.concatenate(lengths)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_score(self, i: int) -> float:
        """The model's score of piece `i` (unigram: its log-probability; BPE: minus its merge rank)."""
        return self._sp.GetScore(int(i))

    def bytes_per_token(self) -> np.ndarray:
        """UTF-8 bytes each token stands for: 0 for special tokens, 1 for byte-fallback pieces."""
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(NUM_SPECIAL, self.vocab_size):
            piece = self._sp.id_to_piece(i)
            out[i] = 1 if _BYTE_PIECE.match(piece) else len(piece.replace("\u2581", " ").encode("utf-8"))
        return out


def _sentences(documents: Iterable[str], max_chars: int) -> Iterable[str]:
    total = 0
    for doc in documents:
        for line in doc.split("\n"):
            line = line[: _MAX_SENTENCE_BYTES // 4]
            if line.strip():
                yield line
                total += len(line)
                if total >= max_chars:
                    return


def train_tokenizer(
    documents: Iterable[str], vocab_size: int, model_type: str, max_chars: int
) -> SentencePieceTokenizer:
    """A SentencePiece model of `vocab_size` pieces trained on the documents' first `max_chars`
    characters (line by line); the vocabulary-size errors name `tokenizer.vocab_size` and its bounds."""
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_sentences(documents, max_chars)),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece=SPECIAL_TOKENS[0],
            bos_piece=SPECIAL_TOKENS[1],
            eos_piece=SPECIAL_TOKENS[2],
            unk_piece=SPECIAL_TOKENS[3],
            user_defined_symbols=list(SPECIAL_TOKENS[4:]),
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        # SentencePiece's two vocabulary-size complaints, told in terms of the config field.
        too_high = re.search(r"Vocabulary size too high \((\d+)\).*?<= (\d+)", str(e))
        too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if too_high:
            message = (
                f"tokenizer.vocab_size={vocab_size} is more than this corpus supports (at most "
                f"{too_high.group(2)} for {model_type}); lower tokenizer.vocab_size or add text"
            )
        elif too_low:
            message = (
                f"tokenizer.vocab_size={vocab_size} is too small: the 256 byte-fallback pieces, the "
                f"special tokens and this corpus's characters need at least {too_low.group(2)}"
            )
        else:
            message = f"training the tokenizer failed: {e}"
        raise ConfigError(message) from e
    return SentencePieceTokenizer(model.getvalue())
