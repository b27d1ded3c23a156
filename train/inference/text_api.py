"""Strings in, strings out: `generate`, `fill_mask`, `score`, `embed` on a loaded model.

The object `train.inference.load.load_trained` and `load_hf` return has these methods (this mixin):

    trained = load_hf("gpt2")                       # or load_trained("runs/gpt")
    trained.generate(["The river"], max_new_tokens=20, temperature=0.8, top_p=0.95)
    trained.score(["The cat sat.", "Cat the sat."])  # log-likelihood (GPT) / pseudo-LL (BERT)
    bert.fill_mask(["The capital of [MASK] is Paris."], top_k=5)
    trained.embed(["a sentence", "another"])       # [N, D] pooled final hidden states

Texts are framed as training framed documents: the vocabulary's bos first; for a whole text a
bidirectional model reads, its eos last (BERT's [CLS] ... [SEP]). A batch is padded (prompts
to the left, texts to the right; padding is segment 0, which no query sees) and handed to the
lower-level functions of models/decode.py and models/scoring.py, so the results are theirs.
The mask token is written as the tokenizer spells it (`mask_token`: `<mask>` for this project's
tokenizers, `[MASK]` for BERT's); it takes the whitespace before it, as a masked word does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import decode, scoring
from models.masks import make_attention_mask

POOLINGS = ("mean", "first", "last")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One candidate for a masked position: the token as the tokenizer spells it, its id and
    probability."""

    token: str  # as the tokenizer spells it
    id: int
    prob: float


@functools.lru_cache(maxsize=16)
def _hidden_fn(graphdef: nnx.GraphDef, mask_kind: str):
    def fn(state, tokens_BL, seg_BL, pos_BL):
        model = nnx.merge(graphdef, state)
        model.eval()
        return model.hidden_states(tokens_BL, make_attention_mask(mask_kind, seg_BL), pos_BL)

    return jax.jit(fn)


class TextAPI:
    """String-level inference; needs `model`, `tokenizer`, `mask_kind` and `objective_name`."""

    model: nnx.Module
    tokenizer: object
    mask_kind: str
    objective_name: str

    # --- encoding --------------------------------------------------------------------------------

    def _checked_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model was loaded without a tokenizer: its directory has none")
        if self.objective_name == "seq2seq":
            raise ValueError("seq2seq models translate: use experiments.tools.sample (models/seq2seq_decode)")
        return self.tokenizer

    @property
    def mask_token(self) -> str:
        tok = self._checked_tokenizer()
        return tok.token(tok.specials.require("mask", "fill_mask"))

    def _text_ids(self, text: str) -> list[int]:
        """The ids of `text`, each spelled mask token becoming the mask id."""
        tok = self._checked_tokenizer()
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        pieces = text.split(self.mask_token) if tok.specials.mask is not None else [text]
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                ids.append(tok.specials.mask)
            piece = piece.rstrip() if i < len(pieces) - 1 else piece
            if piece:
                ids += tok.encode([piece])[0]
        return ids

    def _rows(self, texts: Sequence[str], *, whole: bool) -> list[list[int]]:
        """[bos] + ids (+ [eos] when `whole` and the model reads both ways), length-checked."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings (one per row), not a string")
        if not texts:
            raise ValueError("no texts given")
        sp = self._checked_tokenizer().specials
        end = [sp.eos] if whole and self.mask_kind == "bidirectional" else []
        rows = [[sp.bos, *self._text_ids(t), *end] for t in texts]
        cfg = self.model.cfg
        longest = max(map(len, rows))
        if cfg.position == "learned" and longest > cfg.max_len:
            raise ValueError(
                f"a text takes {longest} tokens with its specials, more than the learned position "
                f"table holds (model.max_len={cfg.max_len}); shorten it"
            )
        return rows

    # --- the API -----------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Each prompt's continuation (without the prompt; up to eos), from a causal model."""
        if self.mask_kind == "bidirectional":
            raise ValueError("a bidirectional (BERT-style) model does not generate: use fill_mask")
        tok = self._checked_tokenizer()
        cfg = decode.SamplingConfig(
            max_new_tokens, temperature, top_k, top_p, eos_id=tok.specials.eos, pad_id=tok.specials.pad
        )
        out = decode.generate(
            self.model,
            self._rows(prompts, whole=False),
            cfg,
            jax.random.PRNGKey(seed),
            bidirectional_prompt=self.objective_name == "prefix_lm",
        )
        return [tok.decode(ids) for ids in out.tokens]

    def fill_mask(self, texts: Sequence[str], top_k: int = 5) -> list[list[list[Prediction]]]:
        """Per text, per mask token in it (left to right), the `top_k` predictions, likeliest first,
        from a bidirectional model (one that reads both sides of each mask)."""
        if self.mask_kind != "bidirectional":
            raise ValueError(
                f"a model trained with the {self.mask_kind} mask predicts from the left of a mask only, so "
                "it does not fill masks: use generate or score, or a bidirectional (BERT-style) model"
            )
        tok = self._checked_tokenizer()
        mask_id = tok.specials.require("mask", "fill_mask")
        rows = self._rows(texts, whole=True)
        if any(mask_id not in r for r in rows):
            raise ValueError(f"every text needs at least one {self.mask_token}")
        filled = decode.fill_mask(self.model, decode.right_pad(rows), mask_id=mask_id, top_k=top_k)
        return [
            [[Prediction(tok.token(i), i, p) for i, p in zip(f.token_ids, f.probs, strict=True)] for f in row]
            for row in filled
        ]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """`[N]` log-likelihood of each text's tokens given bos (causal, prefix LM, hybrid), or
        their pseudo-log-likelihood (bidirectional): see models/scoring.py."""
        sp = self._checked_tokenizer().specials
        batch = decode.right_pad(self._rows(texts, whole=True))
        return scoring.score_sequences(
            self.model,
            self.mask_kind,
            batch["tokens"],
            batch["segment_ids"],
            batch["positions"],
            mask_id=sp.mask,
            special_ids=sp.ids,
        )

    def embed(self, texts: Sequence[str], pooling: str = "mean") -> np.ndarray:
        """`[N, D]` final hidden states pooled over each text: "mean" of its own tokens, "first"
        (the bos / [CLS] position), or "last" (its last token: what a causal model has read all of)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
        rows = self._rows(texts, whole=True)
        batch = decode.right_pad(rows)
        kind = "bidirectional" if self.mask_kind == "bidirectional" else "causal"
        graphdef, state = nnx.split(self.model)
        h_BLD = np.asarray(
            _hidden_fn(graphdef, kind)(
                state, *(jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions"))
            )
        )
        framed = 2 if kind == "bidirectional" else 1  # bos, and eos when present
        out = []
        for b, row in enumerate(rows):
            n_text = len(row) - framed
            if pooling == "first":
                out.append(h_BLD[b, 0])
            elif pooling == "last":
                out.append(h_BLD[b, max(n_text, 0)])
            else:
                out.append(h_BLD[b, 1 : 1 + n_text].mean(0) if n_text else h_BLD[b, 0])
        return np.stack(out)

    def attention_maps(self, text: str) -> tuple[list[str], list[np.ndarray]]:
        """(the tokens of `text` framed as `embed` frames it, each layer's `[heads, L, L]` weights)."""
        rows = self._rows([text], whole=True)
        batch = decode.right_pad(rows)
        kind = "bidirectional" if self.mask_kind == "bidirectional" else "causal"
        tokens, seg, pos = (jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions"))
        maps = self.model.attention_maps(tokens, make_attention_mask(kind, seg), pos)
        return [self.tokenizer.token(i) for i in rows[0]], [np.asarray(m[0]) for m in maps]
