"""A SentencePiece model this project trained, as a Hugging Face `tokenizer.json` that encodes
every string to the same ids, so that an exported run loads with `AutoTokenizer`.

The project's SentencePiece settings (train/tokenizer/sentencepiece.py: identity normalisation,
no dummy prefix, whitespace kept, byte fallback, pieces split at whitespace) map onto the
`tokenizers` library as: a normaliser that spells " " as "▁"; the same model (unigram with the
pieces' scores, or BPE with merges read off the pieces' scores) with byte fallback; for BPE a
pre-tokeniser that splits before each "▁", as SentencePiece's BPE does; the user-defined tokens
(`<mask> <cls> <sep>`) matched in text as SentencePiece matches them; control, unknown and byte
pieces never matched from text (SentencePiece leaves them out of its lattice; here their score
is one no segmentation would pick). A post-processor frames a text as `<bos> ... <eos>`, as the
packer frames a document, so `AutoTokenizer(DIR)(text)` gives the ids a run trained on.

For BPE (the default `tokenizer.model_type`) the two agree on every string. For unigram they
agree except where two segmentations of a text have the same pieces in another order and so the
same score: SentencePiece sums scores in float32, `tokenizers` in float64, and rounding picks a
different one of the tied segmentations (measured with a 1,500-piece model on 100 files of
the standard library: 1 file and 64 of their 81,903 lines, each with the same token count and
score; `tests/test_spm_to_hf.py`).

One difference is transformers' own: `AutoTokenizer` marks every role token special and reads
a special token spelt out in a text as that token, so it reads "<pad>", "<bos>", "<eos>" and
"<unk>" in a text as those tokens where SentencePiece (and the `HFTokenizer` here) read their
characters. Its `split_special_tokens=True` would read them as characters, but "<mask>" too,
which SentencePiece matches and a fill-mask pipeline needs.

`mismatches` encodes strings with both and returns those that differ: the export checks a set of
hard cases before writing, and the tests a whole corpus.
"""

from __future__ import annotations

from collections.abc import Iterable

from train.tokenizer.hf import HFTokenizer
from train.tokenizer.sentencepiece import SentencePieceTokenizer
from train.tokenizer.vocab import DEFAULT, SPECIAL_TOKENS

SPACE = "\u2581"
# Below the score of any segmentation into real pieces, so never the best one.
_NEVER = -1e6
# Strings whose encoding depends on each rule above: runs of spaces, leading and trailing
# whitespace, newlines and tabs, digits, scripts and emoji (byte fallback), the special tokens
# spelt out in text, byte pieces spelt out, and the empty string.
HARD_CASES = (
    "",
    " ",
    "   ",
    " leading",
    "trailing  ",
    "two  spaces\tand a tab\nand\n\nnewlines\r\n",
    "x = 1234567890 + 3.14",
    "日本語のテキスト, Ελληνικά, русский, العربية",
    "emoji 😀🎉 and é è ñ ß",
    "<mask> a<mask>b <cls><sep>",
    "<pad> <bos> <eos> <unk> <0x41> <0xFF>",
    "def f(x):\n    return x ** 2  # comment",
)


def to_hf(sp: SentencePieceTokenizer) -> HFTokenizer:
    """The `HFTokenizer` that encodes and decodes as `sp` does."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors

    proto = _model_proto(sp)
    tok = Tokenizer(_model(proto))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    if proto.trainer_spec.model_type == proto.trainer_spec.BPE:
        from tokenizers import Regex, pre_tokenizers

        tok.pre_tokenizer = pre_tokenizers.Split(
            Regex(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+"), behavior="isolated"
        )
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    user_defined = [p.piece for p in proto.pieces if p.type == p.USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in user_defined])
    bos, eos = SPECIAL_TOKENS[DEFAULT.bos], SPECIAL_TOKENS[DEFAULT.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, DEFAULT.bos), (eos, DEFAULT.eos)],
    )
    roles = {role: SPECIAL_TOKENS[i] for role, i in DEFAULT.roles().items() if i is not None}
    return HFTokenizer(tok.to_str().encode("utf-8"), roles)


def _model_proto(sp: SentencePieceTokenizer):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.model_proto)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if norm.add_dummy_prefix or norm.remove_extra_whitespaces or not spec.byte_fallback:
        raise ValueError(
            "this SentencePiece model was not trained with the project's settings (no dummy prefix, "
            "whitespace kept, byte fallback); it has no exact tokenizer.json equivalent"
        )
    if spec.model_type not in (spec.UNIGRAM, spec.BPE):
        raise ValueError(f"SentencePiece model type {spec.model_type} has no tokenizer.json equivalent here")
    return proto


def _model(proto):
    """The `tokenizers` model of the pieces: unigram scores, or BPE merges ranked by the merged
    piece's score (SentencePiece's BPE merges the adjacent pair whose union scores highest)."""
    from sentencepiece.sentencepiece_model_pb2 import ModelProto
    from tokenizers import models

    kind = ModelProto.SentencePiece
    vocab = [
        (p.piece, p.score if p.type in (kind.NORMAL, kind.USER_DEFINED) else _NEVER) for p in proto.pieces
    ]
    unk = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM:
        return models.Unigram(vocab, unk_id=unk, byte_fallback=True)
    ids = {piece: i for i, (piece, _) in enumerate(vocab)}
    scores = {p.piece: p.score for p in proto.pieces if p.type == kind.NORMAL}

    def operand(piece: str) -> bool:  # a merge joins two normal pieces (single characters are)
        return piece in scores or (len(piece) == 1 and piece in ids)

    merges = sorted(
        (-score, ids[piece[:k]], ids[piece[k:]], piece[:k], piece[k:])
        for piece, score in scores.items()
        for k in range(1, len(piece))
        if operand(piece[:k]) and operand(piece[k:])
    )
    return models.BPE(
        ids, [(a, b) for *_, a, b in merges], unk_token=vocab[unk][0], byte_fallback=True, fuse_unk=True
    )


def mismatches(sp: SentencePieceTokenizer, hf: HFTokenizer, texts: Iterable[str]) -> list[str]:
    """The texts that `sp` and `hf` encode differently, or that `hf` does not decode back."""
    out = []
    for text in texts:
        (a,), (b,) = sp.encode([text]), hf.encode([text])
        if a != b or hf.decode(b) != text:
            out.append(text)
    return out
