"""Documents from a prepared TensorFlow Datasets dataset (`dataset = "tfds:NAME[/CONFIG]"`).

Read through `tfds.data_source` (random access, no TensorFlow needed), so the data must be
prepared in the `array_record` format, on a machine with internet:

    pip install tensorflow-datasets tensorflow
    tfds build lm1b --data_dir=/data/tfds --file_format=array_record

and then trained on with `--config.tfds.data_dir=/data/tfds`. Nothing is downloaded at train
time unless `tfds.download=True`. TFDS itself is imported only when such a dataset is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from typing import Any

from models.errors import ConfigError

log = logging.getLogger(__name__)


def _prepare_hint(name: str, data_dir: str) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    return (
        f"prepare it on a machine with internet: `tfds build {name}{where} --file_format=array_record` "
        f"(then copy the folder here and set tfds.data_dir), or set tfds.download=True"
    )


@contextlib.contextmanager
def no_stray_temp_folders() -> Iterator[None]:
    """TFDS makes an empty folder in the system's temporary directory each time it builds the
    description of a dataset that is not prepared (to copy one from its GCS bucket, which it has
    switched off) and never removes it. Within this block such folders go into one that is
    removed at the end, so that a check or an error message leaves nothing behind. It swaps the
    process's temporary directory: for the checks made before worker threads start."""
    with tempfile.TemporaryDirectory(prefix="tfds-") as folder:
        outer, tempfile.tempdir = tempfile.tempdir, folder
        try:
            yield
        finally:
            tempfile.tempdir = outer


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ConfigError(
            f"dataset='tfds:{name}' needs TensorFlow Datasets: pip install tensorflow-datasets"
        ) from e
    return tfds


def num_records(name: str, split: str, cfg: Any) -> int:
    """The split's record count, after checking that it exists, is prepared and has the feature."""
    with no_stray_temp_folders():
        return _num_records(_import_tfds(name), name, split, cfg)


def _num_records(tfds: Any, name: str, split: str, cfg: Any) -> int:
    data_dir = cfg.data_dir or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first_line = str(e).splitlines()[0]
        raise ConfigError(f"dataset='tfds:{name}': TFDS has no dataset of that name ({first_line})") from e
    if cfg.download:
        builder.download_and_prepare(file_format="array_record")
    known = list(builder.info.splits.keys())  # empty until the dataset is prepared
    if known and split.split("[")[0] not in known:
        raise ConfigError(f"dataset='tfds:{name}' has no split {split!r}; it has {known}")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types for "not prepared / wrong format"
        raise ConfigError(
            f"dataset='tfds:{name}' split {split!r} is not prepared as array_record in "
            f"{data_dir or builder.data_dir}: {_prepare_hint(name, cfg.data_dir)}"
        ) from e
    if len(source) and cfg.text_feature not in source[0]:
        raise ConfigError(
            f"tfds.text_feature={cfg.text_feature!r} is not a feature of tfds:{name}; "
            f"it has {sorted(source[0])}"
        )
    return len(source)


def read_range(name: str, split: str, data_dir: str, feature: str, start: int, stop: int) -> list[str]:
    """The non-blank texts of records [start, stop) (a shard of the token cache's build)."""
    tfds = _import_tfds(name)
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    docs = []
    for i in range(start, stop):
        text = source[i][feature]
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        if text.strip():
            docs.append(text)
    return docs


def read_documents(name: str, split: str, cfg: Any) -> list[str]:
    n = num_records(name, split, cfg)
    docs = read_range(name, split, cfg.data_dir, cfg.text_feature, 0, n)
    if not docs:
        raise ConfigError(no_text_message(name, split, cfg.text_feature))
    return docs


def no_text_message(name: str, split: str, feature: str) -> str:
    return f"dataset='tfds:{name}' split {split!r} holds no text in feature {feature!r}"
