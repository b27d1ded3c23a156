"""Loading a trained model for inference: `load_trained(path)`, on one CPU (or any one device).

Works from a run's workdir (its latest complete checkpoint), a `checkpoints/` folder, or one
step's folder `checkpoints/<step>`, whatever mesh or number of devices wrote it: the parameters
are restored straight onto a single device, and the optimizer state is never read (Orbax
partial restore). The model is rebuilt from the run identity stored in every checkpoint, so a
step folder copied on its own (to Drive, for Colab) still loads; the workdir's `config.json`
and tokenizer (`tokenizer.model` or `tokenizer.json`) are used when they are there.

    trained = load_trained("runs/gpt")
    trained.generate(["The river"]), trained.score(["..."])   # train/inference/text_api.py
    trained.model, trained.tokenizer.encode(["..."]), trained.config.objective
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from models import registry
from train.checkpoint.format import is_step_folder
from train.checkpoint.restore import CheckpointDamaged, read_identity, restore_step
from train.data.sources import make_source
from train.inference.text_api import TextAPI
from train.loop import step as step_lib
from train.loop.evaluator import Evaluator
from train.objectives import Objective, make_objective
from train.tokenizer.files import FILENAMES, AnyTokenizer, find_tokenizer, load_tokenizer
from train.tokenizer.vocab import SymbolTokenizer


@dataclasses.dataclass
class Trained(TextAPI):
    """A loaded model, its tokenizer and where it came from; `generate`, `fill_mask`, `score` and
    `embed` take and give strings (train/inference/text_api.py)."""

    model: nnx.Module  # in eval mode
    identity: dict[str, Any]  # model config, objective, mask, dataset (as the checkpoint stores it)
    config: ml_collections.ConfigDict | None  # the run's full config, when its workdir is there
    tokenizer: AnyTokenizer | SymbolTokenizer | None  # None: an HF directory without tokenizer files
    step: int
    checkpoint: str  # the step folder it came from

    @property
    def mask_kind(self) -> str:
        return self.identity["mask"]

    @property
    def objective_name(self) -> str:
        """The objective it was trained with ("clm", "mlm", ...); `LoadedRun.objective` is the
        `Objective` itself."""
        return self.identity["objective"]


def _step_folder(path: str, step: int | None) -> str:
    path = os.path.abspath(path)
    if is_step_folder(path):
        return path
    folder = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    if not steps:
        raise FileNotFoundError(
            f"no complete checkpoint under {path}: pass a run's workdir, its checkpoints/ folder, or "
            "one step's folder (checkpoints/<step>)"
        )
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{folder} has no step {step}; it has {steps}")
    return os.path.join(folder, str(steps[-1] if step is None else step))


def _workdir(step_folder: str) -> str:
    return os.path.dirname(os.path.dirname(step_folder))  # WORKDIR/checkpoints/<step>


def _workdir_file(step_folder: str, name: str) -> str | None:
    candidate = os.path.join(_workdir(step_folder), name)
    return candidate if os.path.exists(candidate) else None


def load_trained(
    path: str,
    *,
    step: int | None = None,
    expect: dict[str, Any] | None = None,
    device: jax.Device | None = None,
) -> Trained:
    """The trained model at `path` (workdir, checkpoints folder or step folder), on `device`.

    `expect`: a run identity (`train.loop.build.run_identity(config, model_cfg)`) the checkpoint
    must match; a mismatch raises `CheckpointMismatch` listing every field that differs.
    """
    folder = _step_folder(path, step)
    identity = read_identity(folder)
    model_cfg = registry.config_from_identity(identity["model"])
    graphdef, abstract_params, abstract_rest = step_lib.split_model(
        nnx.eval_shape(lambda: registry.make_model(model_cfg, nnx.Rngs(0)))
    )
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices("cpu")[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        {"params": abstract_params, "model_state": abstract_rest, "step": jax.ShapeDtypeStruct((), "int32")},
    )
    try:
        restored = restore_step(folder, target, expect=expect, partial=True).state
    except CheckpointDamaged as e:
        raise CheckpointDamaged(folder, e.problem, f"{e}; load an older step (step=...)") from e
    model = nnx.merge(graphdef, restored["params"], restored["model_state"] or {})
    model.eval()

    config = None
    config_path = _workdir_file(folder, "config.json")
    if config_path:
        with open(config_path) as f:
            raw = json.load(f)
        raw.pop("resolved", None)
        config = ml_collections.ConfigDict(raw)
        config.lock()
    return Trained(
        model=model,
        identity=identity,
        config=config,
        tokenizer=_tokenizer(identity, folder),
        step=int(restored["step"]),
        checkpoint=folder,
    )


def load_hf(path: str) -> Trained:
    """A local Hugging Face GPT-2 / BERT directory (config.json + model.safetensors) as the same
    object `load_trained` returns, for inference without a run. Its tokenizer is its
    `tokenizer.json` (or a SentencePiece `tokenizer.model`); None when it has neither."""
    from train.hf import reader as hf_reader

    path = os.path.expanduser(path)
    found = find_tokenizer(path)
    tokenizer = load_tokenizer(found) if found else None  # a bad file is named before any weight is read
    model, identity = hf_reader.load_model(path)
    return Trained(
        model=model,
        identity=identity,
        config=None,
        tokenizer=tokenizer,
        step=0,
        checkpoint=os.path.abspath(path),
    )


def _tokenizer(identity: dict[str, Any], folder: str) -> AnyTokenizer | SymbolTokenizer:
    if identity["dataset"] in ("hmm", "span:hmm") or identity["dataset"].startswith("seq2seq:"):
        model = identity["model"]
        return SymbolTokenizer(model["vocab_size"] if "vocab_size" in model else model["stack"]["vocab_size"])
    found = find_tokenizer(_workdir(folder))
    if not found:
        raise FileNotFoundError(
            f"{folder} was trained on {identity['dataset']!r} but its workdir has no tokenizer "
            f"({' or '.join(FILENAMES)}); copy the run's tokenizer two levels above the step folder "
            "(next to checkpoints/)"
        )
    return load_tokenizer(found)


@dataclasses.dataclass
class LoadedRun:
    """A trained run ready for evaluation on one CPU device: its model split into pure pieces,
    its data source and its objective, as the run's own config builds them."""

    trained: Trained
    config: ml_collections.ConfigDict
    source: Any
    objective: Objective
    graphdef: nnx.GraphDef
    params: Any
    model_state: Any

    def evaluate(self, objective: Objective | None = None, mask_kind: str | None = None, **kw) -> dict:
        """The fixed eval set's metrics under `objective` and `mask_kind` (default: the run's);
        keywords go to `train.loop.evaluator.Evaluator` (e.g. `eval_form=False`)."""
        sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
        evaluator = Evaluator(
            self.source,
            objective or self.objective,
            self.graphdef,
            mask_kind or self.config.mask,
            sharding,
            **kw,
        )
        return evaluator(self.params, self.model_state)


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None) -> LoadedRun:
    """The run in `workdir` (its latest checkpoint), with `config` or the run's own `config.json`."""
    trained = load_trained(workdir)
    config = config or trained.config
    if config is None:
        raise FileNotFoundError(f"{workdir} has no config.json: load_run needs the run's workdir")
    source = make_source(config, workdir)
    graphdef, params, model_state = step_lib.split_model(trained.model)
    objective = make_objective(config, source.vocab_size, source.specials)
    return LoadedRun(trained, config, source, objective, graphdef, params, model_state)
