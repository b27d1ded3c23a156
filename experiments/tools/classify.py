"""Fine-tune a trained run on a text classification task (SST-2 or IMDB through TFDS).

    python -m experiments.tools.classify --workdir runs/gpt_text --task sst2 --tfds_dir /data/tfds
    python -m experiments.tools.classify --workdir runs/bert_text --task imdb --tfds_dir /data/tfds \
        --seq_len 256 --steps 2000 --seeds 3

The run must be a real-text run (its tokenizer.model encodes the task's text). The data must
be prepared as array_record (`tfds build glue/sst2 --data_dir=/data/tfds
--file_format=array_record`); nothing is downloaded. All weights are fine-tuned with a linear
head on the pooled representation (last token for a causal model, mean otherwise), and one
JSON line per seed plus a mean ± std line are printed (eval accuracy on the task's validation
split for SST-2, test split for IMDB).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from experiments.downstream.classification_data import TASKS, load_task
from experiments.downstream.finetune import finetune
from models.errors import ConfigError
from train.devices.startup import before_jax_starts
from train.inference.load import load_trained
from train.tokenizer.vocab import SymbolTokenizer


def main(argv: list[str] | None = None) -> None:
    before_jax_starts()  # train/devices/startup.py
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a real-text run (folder, checkpoints/ or step)")
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--tfds_dir", default="", help="TFDS data_dir holding the prepared task")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max_train", type=int, default=None)
    parser.add_argument("--max_eval", type=int, default=None)
    args = parser.parse_args(argv)

    trained = load_trained(args.workdir)
    if isinstance(trained.tokenizer, SymbolTokenizer):
        sys.exit(f"error: {args.workdir} was trained on the HMM corpus; fine-tune a run trained on text")
    max_len = trained.identity["model"].get("max_len", args.seq_len)
    if args.seq_len > max_len and trained.identity["model"].get("position") == "learned":
        sys.exit(f"error: --seq_len={args.seq_len} exceeds the model's learned positions (max_len={max_len})")
    try:
        train, eval_, num_classes = load_task(
            args.task,
            trained.tokenizer,
            args.seq_len,
            data_dir=args.tfds_dir,
            max_train=args.max_train,
            max_eval=args.max_eval,
        )
    except ConfigError as e:
        sys.exit(f"error: {e}")
    accuracies = []
    for seed in range(args.seeds):
        result = finetune(
            trained.model,
            trained.mask_kind,
            train,
            eval_,
            num_classes=num_classes,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=seed,
        )
        accuracies.append(result["accuracy"])
        print(json.dumps({"task": args.task, "seed": seed, "objective": trained.objective_name, **result}))
    spread = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    summary = {"mean": float(np.mean(accuracies)), "std": spread, "seeds": args.seeds}
    print(json.dumps({"task": args.task, "objective": trained.objective_name, "accuracy": summary}))


if __name__ == "__main__":
    main()
