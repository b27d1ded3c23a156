"""The shared Transformer's weights in Hugging Face's layouts: GPT-2 (`GPT2LMHeadModel`) and BERT
(`BertForMaskedLM`), with PyTorch's tensor names and shapes, as a Hub `model.safetensors` has them.

A Transformer config is exactly GPT-2 with learned positions, LayerNorm, pre-LN, the tied head
and no embedding norm; exactly BERT with learned positions, LayerNorm, post-LN, `embed_norm`
and the `bert` head (configs/gpt.py:gpt2 and configs/bert.py:bert_base set these). Two HF
tensors have no counterpart here, on purpose: the attention key bias (it adds q.b to every
logit of a query's row, which the softmax cancels; exported as zeros) and BERT's token-type
table (type 0 is folded into the position table on import; exported as zeros).

Parameters are the pure dict of `nnx.state(model, nnx.Param)`; tensors are numpy arrays.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from models import registry
from models.errors import ConfigError
from models.transformer_config import TransformerConfig

FAMILIES = ("gpt2", "bert")
# Tensors a Hub checkpoint may hold that no masked or causal LM here uses: buffers (GPT-2's
# causal mask, BERT's position ids) and the heads of BERT's other pretraining task (NSP, pooler).
_UNUSED = re.compile(
    r"^(h\.\d+\.attn\.(bias|masked_bias)|embeddings\.position_ids|pooler\..*|cls\.seq_relationship\..*)$"
)


def family(cfg: TransformerConfig) -> str | None:
    """ "gpt2" or "bert" if `cfg` is exactly that architecture, else None (`export_errors` says why)."""
    return next((f for f in FAMILIES if not export_errors(cfg, f)), None)


FAMILY_OF_MASK = {"causal": "gpt2", "bidirectional": "bert"}  # GPT2LMHeadModel, BertForMaskedLM


def run_export_errors(config: Any) -> list[str]:
    """Each field that keeps a run config from exporting to Hugging Face (empty: it exports)."""
    fam = FAMILY_OF_MASK.get(config.mask)
    if fam is None:
        return [f"mask={config.mask!r}: GPT-2 is 'causal', BERT 'bidirectional'"]
    if config.model.arch != "transformer":
        return [f"model.arch={config.model.arch!r} has no Hugging Face equivalent (needs 'transformer')"]
    try:  # the vocabulary does not decide exportability; any size builds the shapes
        return export_errors(registry.model_config(config, vocab_size=64), fam)
    except ConfigError as e:
        return e.errors


def export_errors(cfg: TransformerConfig, fam: str) -> list[str]:
    """Each `model.*` field that keeps `cfg` from being family `fam`, with the value it needs."""
    needs = {"arch": "transformer", "position": "learned", "norm": "layernorm", "attn_scale": "sqrt"}
    needs["scan_layers"] = False
    if fam == "gpt2":
        needs |= {"norm_position": "pre", "embed_norm": False, "head": "tied"}
    else:
        needs |= {"norm_position": "post", "embed_norm": True, "head": "bert"}
    return [
        f"model.{k}={getattr(cfg, k)!r} has no {fam} equivalent (needs {v!r})"
        for k, v in needs.items()
        if getattr(cfg, k) != v
    ]


def _t(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(w).T)


def to_hf(params: dict, cfg: TransformerConfig, fam: str) -> dict[str, np.ndarray]:
    """Our parameters -> HF tensors (`fam` must be `family(cfg)`)."""
    out = _gpt2_tensors(params, cfg) if fam == "gpt2" else _bert_tensors(params, cfg)
    return {k: np.ascontiguousarray(np.asarray(v)) for k, v in out.items()}


def _gpt2_tensors(p: dict, cfg: TransformerConfig) -> dict[str, Any]:
    out = {
        "transformer.wte.weight": p["embed"]["embedding"],
        "transformer.wpe.weight": p["positions"]["table"]["embedding"],
    }
    for i in range(cfg.num_layers):
        b, pre = p["blocks"][i], f"transformer.h.{i}."
        a = b["attn"]
        qkv = [a["query"]["kernel"], a["key"]["kernel"], a["value"]["kernel"]]
        out[pre + "attn.c_attn.weight"] = np.concatenate(qkv, axis=1)
        zeros = np.zeros(cfg.d_model, np.asarray(a["query"]["bias"]).dtype)
        out[pre + "attn.c_attn.bias"] = np.concatenate([a["query"]["bias"], zeros, a["value"]["bias"]])
        out[pre + "attn.c_proj.weight"], out[pre + "attn.c_proj.bias"] = a["out"]["kernel"], a["out"]["bias"]
        out[pre + "mlp.c_fc.weight"] = b["mlp"]["up"]["kernel"]
        out[pre + "mlp.c_fc.bias"] = b["mlp"]["up"]["bias"]
        out[pre + "mlp.c_proj.weight"] = b["mlp"]["down"]["kernel"]
        out[pre + "mlp.c_proj.bias"] = b["mlp"]["down"]["bias"]
        for hf, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[pre + hf + ".weight"], out[pre + hf + ".bias"] = b[ours]["scale"], b[ours]["bias"]
    out["transformer.ln_f.weight"] = p["final_norm"]["scale"]
    out["transformer.ln_f.bias"] = p["final_norm"]["bias"]
    return out


def _bert_tensors(p: dict, cfg: TransformerConfig) -> dict[str, Any]:
    e, D = "bert.embeddings.", cfg.d_model
    out = {
        e + "word_embeddings.weight": p["embed"]["embedding"],
        e + "position_embeddings.weight": p["positions"]["table"]["embedding"],
        e + "token_type_embeddings.weight": np.zeros((2, D), np.asarray(p["embed"]["embedding"]).dtype),
        e + "LayerNorm.weight": p["embed_norm"]["scale"],
        e + "LayerNorm.bias": p["embed_norm"]["bias"],
    }
    for i in range(cfg.num_layers):
        b, pre = p["blocks"][i], f"bert.encoder.layer.{i}."
        a = b["attn"]
        for name in ("query", "key", "value"):
            out[pre + f"attention.self.{name}.weight"] = _t(a[name]["kernel"])
        out[pre + "attention.self.query.bias"] = a["query"]["bias"]
        out[pre + "attention.self.key.bias"] = np.zeros(D, np.asarray(a["query"]["bias"]).dtype)
        out[pre + "attention.self.value.bias"] = a["value"]["bias"]
        out[pre + "attention.output.dense.weight"] = _t(a["out"]["kernel"])
        out[pre + "attention.output.dense.bias"] = a["out"]["bias"]
        out[pre + "attention.output.LayerNorm.weight"] = b["attn_norm"]["scale"]
        out[pre + "attention.output.LayerNorm.bias"] = b["attn_norm"]["bias"]
        out[pre + "intermediate.dense.weight"] = _t(b["mlp"]["up"]["kernel"])
        out[pre + "intermediate.dense.bias"] = b["mlp"]["up"]["bias"]
        out[pre + "output.dense.weight"] = _t(b["mlp"]["down"]["kernel"])
        out[pre + "output.dense.bias"] = b["mlp"]["down"]["bias"]
        out[pre + "output.LayerNorm.weight"] = b["mlp_norm"]["scale"]
        out[pre + "output.LayerNorm.bias"] = b["mlp_norm"]["bias"]
    h = p["head"]
    out["cls.predictions.transform.dense.weight"] = _t(h["dense"]["kernel"])
    out["cls.predictions.transform.dense.bias"] = h["dense"]["bias"]
    out["cls.predictions.transform.LayerNorm.weight"] = h["norm"]["scale"]
    out["cls.predictions.transform.LayerNorm.bias"] = h["norm"]["bias"]
    out["cls.predictions.bias"] = h["bias"]
    return out


def _normalise(tensors: dict[str, np.ndarray], fam: str) -> dict[str, np.ndarray]:
    """Old LayerNorm names (gamma/beta) and GPT-2's unprefixed Hub names -> today's."""
    out = {}
    for name, value in tensors.items():
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
        if fam == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        out[name] = np.asarray(value)
    return out


_FLAX_LEAVES = (".kernel", ".embedding", ".scale")


def flax_layout(tensors: dict[str, np.ndarray]) -> bool:
    """Whether the tensors carry Flax's names (`...c_attn.kernel`, `...wte.embedding`) rather than
    PyTorch's (`...weight`): what `FlaxPreTrainedModel.save_pretrained` writes."""
    return any(k.endswith(_FLAX_LEAVES) for k in tensors) and not any(k.endswith(".weight") for k in tensors)


def flax_layout_message(fam: str) -> str:
    """What to do with a directory in Flax layout: convert it once with transformers."""
    auto = "AutoModelForCausalLM" if fam == "gpt2" else "AutoModelForMaskedLM"
    return (
        "its weights are in Flax layout (tensor names ending in .kernel / .embedding / .scale, as "
        "Flax models save them); this reads PyTorch names. Convert it once where PyTorch and Flax are "
        f"installed: python -c \"from transformers import {auto}; {auto}.from_pretrained('DIR', "
        "from_flax=True).save_pretrained('DIR_pt')\" and pass hf:DIR_pt"
    )


def from_hf(tensors: dict[str, np.ndarray], cfg: TransformerConfig, fam: str) -> dict:
    """HF tensors -> our parameters. Every tensor is accounted for: one this model does not know,
    or one it needs that is missing, is a `ValueError` listing them all."""
    if flax_layout(tensors):
        raise ValueError(flax_layout_message(fam))
    t = _normalise(tensors, fam)
    ours = to_hf(_zeros_like_params(cfg, fam), cfg, fam)  # the names and shapes we expect
    head = "lm_head.weight" if fam == "gpt2" else "cls.predictions.decoder.weight"
    embed = "transformer.wte.weight" if fam == "gpt2" else "bert.embeddings.word_embeddings.weight"
    problems = []
    if head in t and embed in t and not np.array_equal(t.pop(head), t[embed]):
        problems.append(f"{head} differs from {embed}: an untied output head has no equivalent here")
    t.pop("cls.predictions.decoder.bias", None)  # the same tensor as cls.predictions.bias
    unused = [k for k in t if _UNUSED.match(k.removeprefix("transformer.").removeprefix("bert."))]
    unknown = sorted(set(t) - set(ours) - set(unused))
    missing = sorted(set(ours) - set(t))
    shapes = [
        f"{k}: {t[k].shape} in the checkpoint, {ours[k].shape} here"
        for k in ours
        if k in t and t[k].shape != ours[k].shape
    ]
    if unknown:
        problems.append(f"tensors this {fam} model does not have: {unknown}")
    if missing:
        problems.append(f"tensors missing from the checkpoint: {missing}")
    problems += shapes
    if problems:
        raise ValueError("the Hugging Face weights do not fit the model:\n  - " + "\n  - ".join(problems))
    return _assemble(t, cfg, fam)


def _assemble(t: dict[str, np.ndarray], cfg: TransformerConfig, fam: str) -> dict:
    D, blocks = cfg.d_model, {}

    def norm(prefix):
        return {"scale": t[prefix + ".weight"], "bias": t[prefix + ".bias"]}

    def linear(w, b, transpose):
        return {"kernel": _t(w) if transpose else w, "bias": b}

    if fam == "gpt2":
        for i in range(cfg.num_layers):
            pre = f"transformer.h.{i}."
            w, bias = t[pre + "attn.c_attn.weight"], t[pre + "attn.c_attn.bias"]
            blocks[i] = {
                "attn": {
                    "query": linear(w[:, :D], bias[:D], False),
                    "key": {"kernel": w[:, D : 2 * D]},
                    "value": linear(w[:, 2 * D :], bias[2 * D :], False),
                    "out": linear(t[pre + "attn.c_proj.weight"], t[pre + "attn.c_proj.bias"], False),
                },
                "attn_norm": norm(pre + "ln_1"),
                "mlp": {
                    "up": linear(t[pre + "mlp.c_fc.weight"], t[pre + "mlp.c_fc.bias"], False),
                    "down": linear(t[pre + "mlp.c_proj.weight"], t[pre + "mlp.c_proj.bias"], False),
                },
                "mlp_norm": norm(pre + "ln_2"),
            }
        return {
            "embed": {"embedding": t["transformer.wte.weight"]},
            "positions": {"table": {"embedding": t["transformer.wpe.weight"]}},
            "blocks": blocks,
            "final_norm": norm("transformer.ln_f"),
        }
    for i in range(cfg.num_layers):
        pre = f"bert.encoder.layer.{i}."
        s = pre + "attention.self."
        blocks[i] = {
            "attn": {
                "query": linear(t[s + "query.weight"], t[s + "query.bias"], True),
                "key": {"kernel": _t(t[s + "key.weight"])},
                "value": linear(t[s + "value.weight"], t[s + "value.bias"], True),
                "out": linear(
                    t[pre + "attention.output.dense.weight"], t[pre + "attention.output.dense.bias"], True
                ),
            },
            "attn_norm": norm(pre + "attention.output.LayerNorm"),
            "mlp": {
                "up": linear(t[pre + "intermediate.dense.weight"], t[pre + "intermediate.dense.bias"], True),
                "down": linear(t[pre + "output.dense.weight"], t[pre + "output.dense.bias"], True),
            },
            "mlp_norm": norm(pre + "output.LayerNorm"),
        }
    e = "bert.embeddings."
    # Every token here has type 0: its type embedding is a constant added to every position.
    positions = t[e + "position_embeddings.weight"] + t[e + "token_type_embeddings.weight"][0]
    p = "cls.predictions."
    return {
        "embed": {"embedding": t[e + "word_embeddings.weight"]},
        "positions": {"table": {"embedding": positions}},
        "embed_norm": norm(e + "LayerNorm"),
        "blocks": blocks,
        "head": {
            "dense": linear(t[p + "transform.dense.weight"], t[p + "transform.dense.bias"], True),
            "norm": norm(p + "transform.LayerNorm"),
            "bias": t[p + "bias"],
        },
    }


def _zeros_like_params(cfg: TransformerConfig, fam: str) -> dict:
    """Parameter shapes of `cfg`, as zeros, without building the model."""
    D, F, V, P = cfg.d_model, cfg.mlp_dim, cfg.vocab_size, cfg.max_len
    z = np.zeros
    lin = lambda i, o: {"kernel": z((i, o), np.float32), "bias": z(o, np.float32)}  # noqa: E731
    ln = {"scale": z(D, np.float32), "bias": z(D, np.float32)}
    block = {
        "attn": {
            "query": lin(D, D),
            "key": {"kernel": z((D, D), np.float32)},
            "value": lin(D, D),
            "out": lin(D, D),
        },
        "attn_norm": ln,
        "mlp": {"up": lin(D, F), "down": lin(F, D)},
        "mlp_norm": ln,
    }
    p = {
        "embed": {"embedding": z((V, D), np.float32)},
        "positions": {"table": {"embedding": z((P, D), np.float32)}},
        "blocks": {i: block for i in range(cfg.num_layers)},
    }
    if fam == "gpt2":
        return p | {"final_norm": ln}
    return p | {"embed_norm": ln, "head": {"dense": lin(D, D), "norm": ln, "bias": z(V, np.float32)}}
