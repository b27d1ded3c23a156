"""Starting from a Hugging Face directory: `init_from=hf:DIR` places its weights in the run's
initial state, `load_hf(DIR)` loads it for inference, both with the HF model's logits; a
directory whose config differs from the run's is refused field by field before compiling, and a
pickled `pytorch_model.bin` is never loaded."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import micro_config, run_command, train_command
from flax import nnx
from hub_models import param_dict, random_transformer, write_hub_dir

from models import registry
from models.errors import ConfigError
from models.masks import make_attention_mask
from train.config_checks import validate
from train.hf import reader as hf_reader
from train.hf.config import hf_config
from train.hf.weights import to_hf
from train.inference.load import load_hf
from train.loop.build import build_run

transformers = pytest.importorskip("transformers")

GPT2_OPTIONS = {"model.position": "learned", "model.norm_eps": 1e-5}
VOCAB = 16 + 7  # the micro config's HMM symbols and the special tokens


def _hub(tmp_path, cfg) -> str:
    """An HF GPT-2 directory of `cfg`'s shapes, every weight drawn (key biases included)."""
    tensors = to_hf(param_dict(random_transformer(cfg, seed=5)), cfg, "gpt2")
    rng = np.random.default_rng(0)
    for name in [n for n in tensors if n.endswith("attn.c_attn.bias")]:
        tensors[name] = rng.normal(0, 0.5, tensors[name].shape).astype(np.float32)
    return write_hub_dir(tmp_path / "hf", tensors, hf_config(cfg, "gpt2"))


def _logits(model, tokens) -> np.ndarray:
    valid = jnp.ones_like(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(model(tokens, make_attention_mask("causal", valid), positions))


@pytest.mark.slow
def test_init_from_places_the_weights_and_load_hf_loads_them(tmp_path):
    config = micro_config(**GPT2_OPTIONS)
    cfg = registry.model_config(config, VOCAB)
    path = _hub(tmp_path, cfg)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (2, 12)), jnp.int32)
    want = np.asarray(
        transformers.FlaxGPT2LMHeadModel.from_pretrained(path)(input_ids=np.asarray(tokens)).logits
    )

    run = build_run(micro_config(**GPT2_OPTIONS, init_from=f"hf:{path}"), str(tmp_path / "w"))
    assert hf_reader.config_differences(path, run.model_config) == []
    state = hf_reader.with_params(
        run.init_state(), hf_reader.read_params(path, cfg), run.tx, run.state_sharding
    )
    model = nnx.merge(run.graphdef, jax.device_get(state.params), jax.device_get(state.model_state) or {})
    np.testing.assert_allclose(_logits(model, tokens), want, atol=1e-4, rtol=1e-4)

    loaded = load_hf(path)
    assert (loaded.objective_name, loaded.mask_kind, loaded.step) == ("clm", "causal", 0)
    np.testing.assert_allclose(_logits(loaded.model, tokens), want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_run_starts_from_the_directory_and_a_mismatch_is_refused_by_field(tmp_path):
    path = _hub(tmp_path, registry.model_config(micro_config(**GPT2_OPTIONS), VOCAB))
    started = run_command(
        train_command(str(tmp_path / "run"), num_train_steps=10, init_from=f"hf:{path}", **GPT2_OPTIONS)
    )
    assert started.returncode == 0, started.stderr[-2000:]
    assert f"initialised from {path}" in started.stderr
    wrong = {**GPT2_OPTIONS, "model.d_model": 64, "model.mlp_dim": 128}
    refused = run_command(train_command(str(tmp_path / "other"), init_from=f"hf:{path}", **wrong))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"model.d_model=64 but {path} has 32 (n_embd)" in refused.stderr
    assert f"model.mlp_dim=128 but {path} has 64 (n_inner)" in refused.stderr
    assert "compiled" not in refused.stderr


def test_a_pickled_checkpoint_is_never_loaded(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(
        ConfigError, match=r"only pytorch_model.bin, a pickle, which is never loaded here"
    ) as e:
        validate(micro_config(init_from=f"hf:{folder}"))
    assert "safe_serialization=True" in str(e.value)
    assert os.path.exists(folder / "pytorch_model.bin")


@pytest.mark.parametrize("safetensors", [True, False])
def test_a_directory_in_flax_layout_is_refused_saying_so_and_how_to_convert(safetensors, tmp_path):
    """What `FlaxGPT2LMHeadModel.save_pretrained` writes (Flax tensor names in model.safetensors,
    or flax_model.msgpack): one message that names the layout and the conversion command."""
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32)
    folder = str(tmp_path / "flax")
    transformers.FlaxGPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=safetensors)
    with pytest.raises(ConfigError, match="in Flax layout") as e:
        load_hf(folder)
    assert "from_flax=True).save_pretrained('DIR_pt')" in str(e.value) and "AutoModelForCausalLM" in str(
        e.value
    )
    assert len(str(e.value).splitlines()) == 1
