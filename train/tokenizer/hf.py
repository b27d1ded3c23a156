"""A Hugging Face `tokenizer.json` (the `tokenizers` library) as a run's tokenizer.

Offers what `train.tokenizer.sentencepiece.SentencePieceTokenizer` offers, so the data
pipeline, the evaluator and inference take either. The special roles come from the tokenizer: from a
`special_tokens_map.json` or `tokenizer_config.json` beside the file when there is one (the
layout the Hub serves), else from the names of its special tokens (GPT-2's `<|endoftext|>` is
bos, eos and pad; BERT's [CLS] and [SEP] frame a document as its bos and eos). Saving writes the
roles beside the copy as `special_tokens_map.json`, so the workdir's copy and an export carry
them.

Text is encoded without the tokenizer's post-processor (`add_special_tokens=False`): the packer
frames each document with the roles' ids itself, which for BERT gives its [CLS] ... [SEP].
Bytes per token are exact for byte-level BPE (each character of a token stands for one byte);
for other models (WordPiece normalises text) they are unknown and bits per byte is not reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from train.tokenizer.vocab import ROLES, Specials

ROLE_FILE = "special_tokens_map.json"
_NAMES: dict[str, tuple[str, ...]] = {  # role -> token names that play it, in order of preference
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "bos": ("<s>", "<bos>", "<|startoftext|>", "<|endoftext|>", "[CLS]", "<cls>"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "[SEP]", "<sep>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "mask": ("[MASK]", "<mask>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
}


def _role_names(folder: str) -> dict[str, str]:
    """Role -> token content from the Hub's role files beside the tokenizer, if any."""
    out: dict[str, str] = {}
    for name in ("tokenizer_config.json", ROLE_FILE):  # the second wins
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            for role in ROLES:
                value = data.get(f"{role}_token")
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    out[role] = value
    return out


class HFTokenizer:
    """A Hugging Face `tokenizer.json` as a run's tokenizer: the same interface as
    `SentencePieceTokenizer`, with special roles read from the Hub's role files or the token names."""

    filename = "tokenizer.json"

    def __init__(self, data: bytes, role_names: dict[str, str] | None = None):
        from tokenizers import Tokenizer as _Tokenizer

        self.serialized = data
        try:
            self._tok = _Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the tokenizers library raises a bare Exception for what it cannot parse
            raise ValueError(f"the tokenizers library cannot read it ({e})") from e
        self._tok.no_padding()
        self._tok.no_truncation()
        self._json = json.loads(data)
        added = self._tok.get_added_tokens_decoder()
        special = {t.content: i for i, t in added.items() if t.special}
        names = role_names or {}
        roles: dict[str, int | None] = {}
        for role in ROLES:
            if role in names:
                i = self._tok.token_to_id(names[role])
                if i is None:
                    raise ValueError(f"{role} token {names[role]!r} is not in the tokenizer's vocabulary")
                roles[role] = i
            else:
                roles[role] = next((special[n] for n in _NAMES[role] if n in special), None)
        roles["pad"] = roles["pad"] if roles["pad"] is not None else roles["eos"]
        missing = [r for r in ("bos", "eos") if roles[r] is None]
        if missing:
            raise ValueError(
                f"cannot tell which token is {' and '.join(missing)} among the tokenizer's special "
                f"tokens {sorted(special)}: put a {ROLE_FILE} beside tokenizer.json naming them, "
                'e.g. {"bos_token": "<s>", "eos_token": "</s>"}'
            )
        ids = sorted(set(special.values()) | {i for i in roles.values() if i is not None})
        self.specials = Specials(**roles, ids=tuple(ids))

    @classmethod
    def load(cls, path: str) -> HFTokenizer:
        with open(path, "rb") as f:
            return cls(f.read(), _role_names(os.path.dirname(os.path.abspath(path))))

    def save(self, path: str) -> None:
        """`path` (a tokenizer.json) and its roles beside it, each written atomically."""
        files = (
            (path, self.serialized),
            (os.path.join(os.path.dirname(path), ROLE_FILE), json.dumps(self.role_tokens()).encode()),
        )
        for target, data in files:
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)

    def role_tokens(self) -> dict[str, str]:
        """The roles as the Hub's role files write them: {"bos_token": "<|endoftext|>", ...}."""
        return {f"{r}_token": self.token(i) for r, i in self.specials.roles().items() if i is not None}

    @property
    def fingerprint(self) -> str:
        """Identifies the tokenization (vocabulary, rules and roles) in data-cache keys."""
        roles = json.dumps(self.specials.roles(), sort_keys=True).encode()
        return hashlib.sha256(self.serialized + roles).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_arrays(
        self, texts: Sequence[str], dtype: np.dtype, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all texts concatenated, as `dtype`; each text's length)."""
        del num_threads  # the library parallelises batches itself (TOKENIZERS_PARALLELISM)
        ids = self.encode(texts)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter((i for row in ids for i in row), dtype, int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def bytes_per_token(self) -> np.ndarray | None:
        """UTF-8 bytes each token stands for (0 for specials), or None where that is not defined."""
        if (self._json.get("decoder") or {}).get("type") != "ByteLevel":
            return None
        out = np.zeros(self.vocab_size, np.int32)
        added = self._tok.get_added_tokens_decoder()
        for i in range(self.vocab_size):
            if i in self.specials.ids:
                continue
            token = self._tok.id_to_token(i)
            # Byte-level pieces spell each byte as one character; added tokens are raw text.
            out[i] = len(token.encode("utf-8")) if i in added else len(token)
        return out
