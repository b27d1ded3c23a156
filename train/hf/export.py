"""A trained run as a Hugging Face model directory, for people who use PyTorch.

    python -m train.hf.export --workdir runs/gpt --out exported/gpt [--step 1500]

Writes `config.json`, `model.safetensors` (PyTorch names and layouts of `GPT2LMHeadModel` or
`BertForMaskedLM`), the run's tokenizer as a Hugging Face `tokenizer.json` with its special-token
files, which `AutoTokenizer` loads (a run's SentencePiece model is converted, checked to encode a
set of hard cases to the same ids, and kept beside it as `tokenizer.model`;
train/tokenizer/spm_to_hf.py), and a model card (`README.md`: objective, mask, data, step, final
eval metrics, the training config).
A causal run of the GPT-2 architecture exports as GPT-2, a bidirectional run of the BERT one as
BERT (train/hf/weights.py); any other run is refused before anything is written, naming each
field and the value that would export. The directory appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from flax import nnx
from safetensors.numpy import save_file

from models import registry
from models.transformer_config import TransformerConfig
from train.checkpoint.restore import CheckpointMismatch
from train.flag_errors import parse_flags
from train.hf.config import hf_config
from train.hf.weights import FAMILY_OF_MASK, export_errors, to_hf
from train.inference.load import load_trained
from train.observe.metrics import read_metrics
from train.tokenizer import spm_to_hf
from train.tokenizer.hf import ROLE_FILE, HFTokenizer
from train.tokenizer.sentencepiece import SentencePieceTokenizer
from train.tokenizer.vocab import SymbolTokenizer

_WORKDIR = flags.DEFINE_string("workdir", None, "the run to export (its latest checkpoint unless --step)")
_STEP = flags.DEFINE_integer("step", None, "the checkpoint step to export")
_OUT = flags.DEFINE_string("out", None, "the Hugging Face directory to write (must not exist)")


class ExportError(ValueError):
    """The run has no Hugging Face equivalent; the message names each field."""


def export(workdir: str, out: str, step: int | None = None) -> str:
    """Writes the HF directory `out` for the run in `workdir`; returns the family written."""
    if os.path.exists(out):
        raise ExportError(f"{out} exists; choose a new --out (nothing is overwritten)")
    trained = load_trained(workdir, step=step)
    cfg = registry.config_from_identity(trained.identity["model"])
    mask = trained.identity["mask"]
    if not isinstance(cfg, TransformerConfig):
        raise ExportError(f"model.arch={cfg.arch!r} has no Hugging Face equivalent (needs 'transformer')")
    fam = FAMILY_OF_MASK.get(mask)  # the mask picks the family
    if fam is None:
        raise ExportError(
            f"mask={mask!r}: GPT-2 is 'causal', BERT 'bidirectional'; no HF class takes this mask"
        )
    errors = export_errors(cfg, fam)
    if errors:
        raise ExportError(f"this {mask} run cannot export as {fam}:\n  - " + "\n  - ".join(errors))
    tokenizer = tokenizer_files(trained.tokenizer)
    params = jax.tree.map(np.asarray, nnx.state(trained.model, nnx.Param).to_pure_dict())
    tmp = f"{out}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    try:
        save_file(to_hf(params, cfg, fam), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        sp = trained.tokenizer.specials
        special = {"bos_token_id": sp.bos, "eos_token_id": sp.eos, "pad_token_id": sp.pad}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(cfg, fam, special), f, indent=2)
        for name, data in tokenizer.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_card(workdir, trained, fam))
        _readable_by_all(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fam


def _readable_by_all(folder: str) -> None:
    """The folder and its files as a plain write would make them (safetensors writes 0600):
    readable by the other users of a shared machine, as far as the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def tokenizer_files(tok) -> dict[str, bytes]:
    """File name -> contents of the run's tokenizer in the layout `AutoTokenizer` reads: the
    `tokenizer.json`, its roles and `tokenizer_config.json` (nothing for the synthetic corpus,
    whose ids are the card's rule). A SentencePiece model goes in converted, and stays beside."""
    if isinstance(tok, SymbolTokenizer):
        return {}
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    files = {}
    if isinstance(tok, SentencePieceTokenizer):
        files[tok.filename] = tok.model_proto
        tok = _converted(tok)
    files[tok.filename] = tok.serialized
    files[ROLE_FILE] = json.dumps(tok.role_tokens(), indent=2).encode()
    files["tokenizer_config.json"] = json.dumps({**config, **tok.role_tokens()}, indent=2).encode()
    return files


def _converted(sp: SentencePieceTokenizer) -> HFTokenizer:
    try:
        hf = spm_to_hf.to_hf(sp)
    except ValueError as e:
        raise ExportError(f"the run's tokenizer.model: {e}") from e
    wrong = spm_to_hf.mismatches(sp, hf, spm_to_hf.HARD_CASES)
    if wrong:
        raise ExportError(
            f"the run's tokenizer.model converts to a tokenizer.json that encodes {wrong[0]!r} differently"
        )
    return hf


def _tokenizer_note(tok) -> str:
    if isinstance(tok, SymbolTokenizer):
        return "The run's data was the embedded synthetic corpus: symbol k is token id k + 7."
    roles = ", ".join(f"{r} {tok.token(i)!r} = {i}" for r, i in tok.specials.roles().items() if i is not None)
    if isinstance(tok, HFTokenizer):
        return f"`tokenizer.json` (Hugging Face `tokenizers`; `AutoTokenizer` loads it); {roles}."
    exact = (
        "encodes every text as the run's SentencePiece model did"
        if tok.model_type == "bpe"
        else "encodes as the run's SentencePiece unigram model did, except that where two segmentations "
        "tie in score it may pick the other one (rare: see train/tokenizer/spm_to_hf.py)"
    )
    exact += (
        " (as with every Hugging Face tokenizer, `AutoTokenizer` reads `<pad>`, `<bos>`, `<eos>` and "
        "`<unk>` spelt out in a text as those tokens, where the run read their characters)"
    )
    return (
        f"`tokenizer.json` (Hugging Face `tokenizers`; `AutoTokenizer` loads it) {exact}; the model is kept "
        f"as `tokenizer.model`; {roles}. `AutoTokenizer(DIR)(text)` frames a text as `<bos> ... <eos>`, as "
        "the run framed each document."
    )


def _card(workdir: str, trained, fam: str) -> str:
    evals = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "eval"]
    final = {k: v for k, v in evals[-1].items() if k not in ("step", "split")} if evals else {}
    cls = "GPT2LMHeadModel" if fam == "gpt2" else "BertForMaskedLM"
    config = trained.config.to_dict() if trained.config is not None else None
    command = ""
    if os.path.exists(os.path.join(workdir, "config.json")):
        with open(os.path.join(workdir, "config.json")) as f:
            command = json.load(f).get("resolved", {}).get("command", "")
    tok = _tokenizer_note(trained.tokenizer)
    return "\n".join(
        [
            f"# {os.path.basename(os.path.abspath(workdir))}",
            "",
            f"Exported by `python -m train.hf.export` from step {trained.step} of `{workdir}`; loads as "
            f"`transformers.{cls}` (PyTorch) or `Flax{cls}`.",
            "",
            f"- objective: `{trained.identity['objective']}`, mask: `{trained.identity['mask']}`",
            f"- data: `{trained.identity['dataset']}`",
            f"- final eval metrics: `{json.dumps(final)}`",
            f"- tokenizer: {tok}",
            "",
            *(["Trained with (its latest launch):", "", "```bash", command, "```", ""] if command else []),
            "The training config:",
            "",
            "```json",
            json.dumps(config, indent=2, sort_keys=True),
            "```",
            "",
        ]
    )


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    try:
        fam = export(_WORKDIR.value, _OUT.value, _STEP.value)
    except (ExportError, FileNotFoundError, CheckpointMismatch) as e:  # no run, step or tokenizer
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {_OUT.value} ({fam})")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main, flags_parser=parse_flags)
