"""config.json of Hugging Face's GPT-2 (`GPT2LMHeadModel`) and BERT (`BertForMaskedLM`), to and
from the shared Transformer's `model.*` fields (the weights: train/hf/weights.py)."""

from __future__ import annotations

from typing import Any

from models.transformer_config import TransformerConfig


def hf_config(cfg: TransformerConfig, fam: str, special: dict[str, int] | None = None) -> dict[str, Any]:
    """config.json of the HF model `to_hf` writes the weights of."""
    act = "gelu_new" if cfg.activation == "gelu_tanh" else "gelu"
    special = special or {}
    if fam == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.mlp_dim,
            "activation_function": act,
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": True,
            **{k: v for k, v in special.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        }
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": act,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": 2,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        **{k: v for k, v in special.items() if k == "pad_token_id"},
    }


def model_fields(hf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family, the `model.*` fields) of an HF config.json; `ValueError` if it is neither family."""
    kind = hf.get("model_type")
    acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        fields = dict(
            d_model=hf["n_embd"],
            num_heads=hf["n_head"],
            num_layers=hf["n_layer"],
            mlp_dim=hf.get("n_inner") or 4 * hf["n_embd"],
            max_len=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            norm_position="pre",
            embed_norm=False,
            head="tied",
        )
    elif kind == "bert":
        act = hf.get("hidden_act", "gelu")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type={hf['position_embedding_type']!r}: only 'absolute' maps here"
            )
        fields = dict(
            d_model=hf["hidden_size"],
            num_heads=hf["num_attention_heads"],
            num_layers=hf["num_hidden_layers"],
            mlp_dim=hf["intermediate_size"],
            max_len=hf["max_position_embeddings"],
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            norm_position="post",
            embed_norm=True,
            head="bert",
        )
    else:
        raise ValueError(
            f"model_type={kind!r}: only 'gpt2' (GPT2LMHeadModel) and 'bert' (BertForMaskedLM) map here"
        )
    if act not in acts:
        raise ValueError(f"activation {act!r} has no equivalent here (use one of {sorted(acts)})")
    common = dict(
        arch="transformer", position="learned", norm="layernorm", attn_scale="sqrt", activation=acts[act]
    )
    return kind, {"vocab_size": hf["vocab_size"], **fields, **common}
