"""Samples at eval: what the model produces, to TensorBoard text (`eval_samples` prompts; 0: off).

The prompts are fixed: the first `eval_samples` rows of the eval set, cut to their first quarter
(at most 16 tokens, within the row's first document). A causal model (GPT, prefix LM, hybrid)
continues each greedily and by sampling (temperature 1, top-p 0.95, a fixed seed) for 16 tokens;
a masked model sees each prompt with two of its tokens masked and gives its top 3 for each.
Both go through models/decode.py, as the string API does. Only single-process runs write them:
in a multi-process run the parameters live on devices of several hosts.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from flax import nnx

from models import decode

log = logging.getLogger(__name__)

NEW_TOKENS = 16
TOP_K = 3


class EvalSamples:
    """Samples written to TensorBoard text at each eval: the first eval rows' prompts continued
    (causal models) or their masked positions filled (bidirectional ones), decoded to text."""

    def __init__(self, source: Any, graphdef: nnx.GraphDef, objective: str, mask_kind: str, count: int):
        self.tokenizer, self.specials = source.tokenizer, source.specials
        self.graphdef, self.objective, self.mask_kind = graphdef, objective, mask_kind
        batch = source.eval_batches()[0]
        self.prompts: list[list[int]] = []
        for tokens, seg in zip(batch["tokens"][:count], batch["segment_ids"][:count], strict=True):
            first_doc = tokens[: int(np.argmax(seg != seg[0])) or len(tokens)] if seg[0] else tokens[:0]
            cut = max(2, min(16, len(tokens) // 4))
            if len(first_doc) >= 3:
                self.prompts.append([int(t) for t in first_doc[:cut]])

    def __call__(self, params: Any, model_state: Any) -> dict[str, str]:
        """{TensorBoard tag: markdown} for the current parameters."""
        if not self.prompts:
            return {}
        model = nnx.merge(self.graphdef, params, model_state or {})
        if self.mask_kind == "bidirectional":
            return {"samples/fill_mask": self._fill_mask(model)}
        out = {}
        for tag, temperature in (("samples/greedy", 0.0), ("samples/sampled", 1.0)):
            cfg = decode.SamplingConfig(
                NEW_TOKENS, temperature, top_p=0.95, eos_id=self.specials.eos, pad_id=self.specials.pad
            )
            gen = decode.generate(
                model,
                self.prompts,
                cfg,
                jax.random.PRNGKey(0),
                bidirectional_prompt=self.objective == "prefix_lm",
            )
            out[tag] = "\n\n".join(
                f"`{self._text(p)}` → `{self._text(new)}`"
                for p, new in zip(self.prompts, gen.tokens, strict=True)
            )
        return out

    def _fill_mask(self, model: nnx.Module) -> str:
        mask_id = self.specials.mask
        rows = []
        for p in self.prompts:
            masked = {len(p) // 3, 2 * len(p) // 3} - {0}
            rows.append([mask_id if t in masked else token for t, token in enumerate(p)])
        filled = decode.fill_mask(model, decode.right_pad(rows), mask_id=mask_id, top_k=TOP_K)
        lines = []
        for p, row in zip(self.prompts, filled, strict=True):
            guesses = "; ".join(
                f"{self.tokenizer.token(p[f.position])!r} → "
                + ", ".join(
                    f"{self.tokenizer.token(i)!r} {q:.2f}" for i, q in zip(f.token_ids, f.probs, strict=True)
                )
                for f in row
            )
            lines.append(f"`{self._text(p)}`: {guesses}")
        return "\n\n".join(lines)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).replace("`", "'")
