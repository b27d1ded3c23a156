"""Text classification sets for fine-tuning (SST-2, IMDB), as rows the pretrained models read.

Read through `tfds.data_source` (random access over array_record files, no TensorFlow), so a set
must be prepared once on a machine with internet, e.g.

    tfds build glue/sst2 --data_dir=/data/tfds --file_format=array_record

Text is encoded with the pretraining run's SentencePiece tokenizer and laid out like a
pretraining document: [BOS, tokens..., padding], truncated to the row (the start of a long IMDB
review is kept), segment id 1 on real tokens and 0 on padding, positions from 0.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.errors import ConfigError
from train.data.tfds import no_stray_temp_folders
from train.tokenizer.vocab import BOS_ID, PAD_ID


@dataclasses.dataclass(frozen=True)
class TextTask:
    tfds_name: str
    text_feature: str
    label_feature: str
    num_classes: int
    train_split: str
    eval_split: str
    # Some builders are registered only when their module is imported (TFDS imports its
    # `text` package lazily, and not at all without TensorFlow).
    builder_module: str = ""


TASKS: dict[str, TextTask] = {
    # GLUE's SST-2 test labels are hidden (-1): its validation split is the eval set.
    "sst2": TextTask(
        "glue/sst2", "sentence", "label", 2, "train", "validation", "tensorflow_datasets.text.glue"
    ),
    "imdb": TextTask("imdb_reviews", "text", "label", 2, "train", "test"),
}


def classification_rows(
    ids: Sequence[Sequence[int]], labels: Sequence[int] | np.ndarray, seq_len: int
) -> dict[str, np.ndarray]:
    """Rows `[N, seq_len]`: BOS and the first `seq_len - 1` ids of each example, then padding."""
    N = len(ids)
    tokens = np.full((N, seq_len), PAD_ID, np.int32)
    segment_ids = np.zeros((N, seq_len), np.int32)
    positions = np.zeros((N, seq_len), np.int32)
    for n, example in enumerate(ids):
        row = [BOS_ID, *example[: seq_len - 1]]
        tokens[n, : len(row)] = row
        segment_ids[n, : len(row)] = 1
        positions[n, : len(row)] = np.arange(len(row))
    return {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "positions": positions,
        "labels": np.asarray(labels, np.int32),
    }


def _read_split(task: TextTask, split: str, data_dir: str, max_examples: int | None):
    import tensorflow_datasets as tfds  # only here: the rest of the project never needs it

    if task.builder_module:
        importlib.import_module(task.builder_module)

    try:
        with no_stray_temp_folders():
            source = tfds.data_source(task.tfds_name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # TFDS raises several types for "not prepared / wrong format"
        where = f" --data_dir={data_dir}" if data_dir else ""
        raise ConfigError(
            f"tfds:{task.tfds_name} split {split!r} is not prepared as array_record"
            f"{' in ' + data_dir if data_dir else ''}: prepare it on a machine with internet with "
            f"`tfds build {task.tfds_name}{where} --file_format=array_record` (then copy the folder "
            f"here and pass its path as data_dir)"
        ) from e
    n = len(source) if max_examples is None else min(len(source), max_examples)
    texts, labels = [], []
    for i in range(n):
        example = source[i]
        for feature in (task.text_feature, task.label_feature):
            if feature not in example:
                raise ConfigError(
                    f"tfds:{task.tfds_name} has no feature {feature!r}; it has {sorted(example)}"
                )
        text = example[task.text_feature]
        texts.append(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text))
        labels.append(int(example[task.label_feature]))
    return texts, labels


def load_task(
    name: str,
    tokenizer: Any,
    seq_len: int,
    *,
    data_dir: str = "",
    max_train: int | None = None,
    max_eval: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """(train rows, eval rows, number of classes) of task `name` ("sst2" or "imdb").

    `tokenizer` is a `train.tokenizer.sentencepiece.SentencePieceTokenizer` (anything with
    `encode(texts) -> list of id lists`); `max_train` / `max_eval` keep the first examples of a
    split, for quick runs.
    """
    if name not in TASKS:
        raise ConfigError(f"classification task {name!r} is not one of {sorted(TASKS)}")
    task = TASKS[name]
    out = []
    for split, limit in ((task.train_split, max_train), (task.eval_split, max_eval)):
        texts, labels = _read_split(task, split, data_dir, limit)
        out.append(classification_rows(tokenizer.encode(texts), labels, seq_len))
    return out[0], out[1], task.num_classes
