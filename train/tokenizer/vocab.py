"""Special tokens as data: which ids play which role, carried by every tokenizer and source.

The project's own vocabularies (the HMM corpus, the seq2seq tasks, SentencePiece tokenizers it
trains) put the specials first, in SentencePiece's reserved order (pad, bos, eos, unk) with the
tokens masked LM and fine-tuning need right after them: `DEFAULT`, real tokens from
`NUM_SPECIAL` on. An imported Hugging Face tokenizer brings its own ids (GPT-2's single
`<|endoftext|>` at 50256 serves as bos, eos and pad; BERT's [CLS] [SEP] [MASK] [PAD] [UNK] sit at
101, 102, 103, 0, 100), so code that needs a role asks the vocabulary's `Specials`, never a
constant, and one code path serves both. `SymbolTokenizer` writes the synthetic corpora's
symbols as text (`s0`, `s1`, ...).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<cls>", "<sep>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID, CLS_ID, SEP_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL = len(SPECIAL_TOKENS)
ROLES: tuple[str, ...] = ("pad", "bos", "eos", "unk", "mask", "cls", "sep")


@dataclasses.dataclass(frozen=True)
class Specials:
    """The id of each special role (None: the vocabulary has no such token) and every special id.

    `bos` and `eos` frame each packed document; `pad` fills what no document does (its value is
    never read: segment 0 marks padding); `mask` is what MLM writes; `ids` are never selected
    by MLM, never drawn as MLM's random replacements, and stand for no bytes of text.
    """

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID
    unk: int | None = UNK_ID
    mask: int | None = MASK_ID
    cls: int | None = CLS_ID
    sep: int | None = SEP_ID
    ids: tuple[int, ...] = tuple(range(NUM_SPECIAL))

    def __post_init__(self):
        roles = {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}
        stray = {r: i for r, i in roles.items() if i not in self.ids}
        if stray:
            raise ValueError(f"special roles {stray} are not among the special ids {self.ids}")

    def regular_ids(self, vocab_size: int) -> np.ndarray:
        """The ids that are not special, ascending (what MLM may select or draw)."""
        keep = np.ones(vocab_size, bool)
        keep[[i for i in self.ids if i < vocab_size]] = False
        return np.flatnonzero(keep).astype(np.int32)

    def roles(self) -> dict[str, int | None]:
        return {r: getattr(self, r) for r in ROLES}

    def require(self, role: str, why: str) -> int:
        """The id of `role`, or a ValueError saying the tokenizer lacks it and what needed it."""
        value = getattr(self, role)
        if value is None:
            raise ValueError(f"the tokenizer has no {role} token, which {why} needs; {self.roles()}")
        return value


DEFAULT = Specials()


class SymbolTokenizer:
    """The embedded HMM corpus's "tokenizer": symbol k is written `s<k>` (token id k + NUM_SPECIAL)."""

    specials = DEFAULT

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Space-separated symbols (`s0`, `s1`, ...) and special tokens -> ids; `ValueError` naming
        any other word."""
        out = []
        for text in texts:
            ids = []
            for word in text.split():
                if word in SPECIAL_TOKENS:
                    ids.append(SPECIAL_TOKENS.index(word))
                elif re.fullmatch(r"s\d+", word) and int(word[1:]) + NUM_SPECIAL < self.vocab_size:
                    ids.append(int(word[1:]) + NUM_SPECIAL)
                else:
                    raise ValueError(
                        f"{word!r} is not a symbol of the HMM corpus: write symbols as s0 .. "
                        f"s{self.vocab_size - NUM_SPECIAL - 1}, or special tokens {SPECIAL_TOKENS}"
                    )
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(map(self.token, ids))

    def token(self, i: int) -> str:
        return SPECIAL_TOKENS[int(i)] if int(i) < NUM_SPECIAL else f"s{int(i) - NUM_SPECIAL}"
