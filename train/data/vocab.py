"""Special token ids shared by every dataset and tokenizer, so GPT and BERT runs share one vocab.

The order matches SentencePiece's reserved ids (pad, bos, eos, unk first), with the tokens that
masked LM and fine-tuning need right after them. Real tokens start at `NUM_SPECIAL`.
"""

from __future__ import annotations

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<cls>", "<sep>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID, CLS_ID, SEP_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL = len(SPECIAL_TOKENS)
