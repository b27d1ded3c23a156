"""The shared block is exactly GPT-2 and exactly BERT: weights written in the Hub's PyTorch layout
(train/hf/weights.py) load in Hugging Face's own Flax classes, through their PyTorch-name
conversion, with the same logits; HF tensors with every parameter drawn at random (non-zero key
biases and token-type embeddings included) import with the HF model's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hub_models import param_dict, random_transformer, transformer_with, write_hub_dir

from models.masks import make_attention_mask
from models.transformer import Transformer, TransformerConfig
from train.hf.config import hf_config, model_fields
from train.hf.weights import export_errors, family, from_hf, to_hf

transformers = pytest.importorskip("transformers")

ARCH = {
    "gpt2": dict(norm_position="pre", norm_eps=1e-5, activation="gelu_tanh"),
    "bert": dict(norm_position="post", norm_eps=1e-12, activation="gelu", embed_norm=True, head="bert"),
}


def _cfg(fam: str) -> TransformerConfig:
    shape = dict(vocab_size=61, d_model=32, num_heads=4, num_layers=2, mlp_dim=48, max_len=16)
    return TransformerConfig(**shape, position="learned", **ARCH[fam])


def _hf_model(fam: str, path: str):
    cls = transformers.FlaxGPT2LMHeadModel if fam == "gpt2" else transformers.FlaxBertForMaskedLM
    return cls.from_pretrained(path)


def _batch(cfg: TransformerConfig):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (3, 12)).astype(np.int32)
    valid = np.ones_like(tokens)
    valid[1, 9:], valid[2, 5:] = 0, 0  # right padding
    return tokens, valid


def _ours(model: Transformer, fam: str, tokens, valid) -> np.ndarray:
    mask = make_attention_mask("causal" if fam == "gpt2" else "bidirectional", jnp.asarray(valid))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(model(jnp.asarray(tokens), mask, positions))


def _theirs(hf, tokens, valid) -> np.ndarray:
    return np.asarray(hf(input_ids=tokens, attention_mask=valid).logits)


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["gpt2", "bert"])
def test_exported_weights_load_in_hugging_face_with_the_same_logits(fam, tmp_path):
    cfg = _cfg(fam)
    assert family(cfg) == fam
    model = random_transformer(cfg)
    path = write_hub_dir(tmp_path / fam, to_hf(param_dict(model), cfg, fam), hf_config(cfg, fam))
    tokens, valid = _batch(cfg)
    got, want = _ours(model, fam, tokens, valid), _theirs(_hf_model(fam, path), tokens, valid)
    real = valid.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
    print(f"{fam}: max |ours - HF| = {np.abs(got[real] - want[real]).max():.2g}")  # with pytest -s
    assert want[real].std() > 0.1  # the comparison is not between near-constant logits


@pytest.mark.slow
@pytest.mark.parametrize("fam", ["gpt2", "bert"])
def test_hugging_face_weights_import_with_its_logits_and_round_trip(fam, tmp_path):
    cfg = _cfg(fam)
    tensors = to_hf(param_dict(random_transformer(cfg, seed=3)), cfg, fam)
    assert {k: v.tolist() for k, v in to_hf(from_hf(tensors, cfg, fam), cfg, fam).items()} == {
        k: v.tolist() for k, v in tensors.items()
    }
    # What our export writes as zeros, an HF model has drawn: key biases, token-type embeddings.
    rng = np.random.default_rng(1)
    for name in list(tensors):
        if name.endswith(("attn.c_attn.bias", "self.key.bias", "token_type_embeddings.weight")):
            tensors[name] = rng.normal(0, 0.5, tensors[name].shape).astype(np.float32)
    fields, hub = model_fields(hf_config(cfg, fam))
    assert fields == fam and TransformerConfig(**hub) == cfg
    hf = _hf_model(fam, write_hub_dir(tmp_path / fam, tensors, hf_config(cfg, fam)))
    tokens, valid = _batch(cfg)
    got = _ours(transformer_with(from_hf(tensors, cfg, fam), cfg), fam, tokens, valid)
    real = valid.astype(bool)
    np.testing.assert_allclose(got[real], _theirs(hf, tokens, valid)[real], atol=1e-4, rtol=1e-4)


def test_every_tensor_is_accounted_for():
    cfg = _cfg("gpt2")
    tensors = to_hf(param_dict(random_transformer(cfg)), cfg, "gpt2")
    # The Hub's GPT-2 file: no "transformer." prefix, the causal-mask buffers, the tied head.
    hub = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    hub["h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
    hub["lm_head.weight"] = hub["wte.weight"]
    from_hf(hub, cfg, "gpt2")
    broken = dict(tensors)
    broken["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    del broken["transformer.ln_f.bias"]
    with pytest.raises(ValueError, match=r"does not have: \['transformer.h.0.attn.rotary.weight'\]") as e:
        from_hf(broken, cfg, "gpt2")
    assert "missing from the checkpoint: ['transformer.ln_f.bias']" in str(e.value)


def test_an_architecture_without_an_equivalent_names_each_field():
    rotary = TransformerConfig(vocab_size=8, d_model=8, num_heads=2, num_layers=1, mlp_dim=8, max_len=8)
    assert family(rotary) is None
    assert export_errors(rotary, "gpt2") == [
        "model.position='rotary' has no gpt2 equivalent (needs 'learned')"
    ]


@pytest.mark.parametrize(
    "config_file, variant, vocab, hf_count, ours_fewer",
    [
        # GPT-2 124M; ours has no attention key bias (12 layers x 768).
        ("configs/gpt.py", "gpt2", 50257, 124_439_808, 12 * 768),
        # BertForMaskedLM, bert-base; ours also folds the token-type table (2 x 768) away.
        ("configs/bert.py", "bert_base", 30522, 109_514_298, 12 * 768 + 2 * 768),
    ],
)
def test_the_presets_are_exactly_gpt2_124m_and_bert_base(config_file, variant, vocab, hf_count, ours_fewer):
    import importlib

    from models import registry

    module = importlib.import_module(config_file.removesuffix(".py").replace("/", "."))
    cfg = registry.model_config(module.get_config(variant), vocab)
    assert family(cfg) == ("gpt2" if variant == "gpt2" else "bert")
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == hf_count - ours_fewer
