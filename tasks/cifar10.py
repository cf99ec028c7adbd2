"""CIFAR-10 read from a local directory in the standard python pickle format (never downloaded).

The directory (suite key `path`, or when empty the environment variable
CIFAR10_DIR) holds `data_batch_1` .. `data_batch_5` (training) and
`test_batch` (held out): pickled dicts with b"data", uint8 rows of 3072
values in channel-major order (1024 red, 1024 green, 1024 blue), and
b"labels". Pickles can run code when read: point this only at files you
trust. Images become (N, 32, 32, 3) float32 in [0, 1], standardised per
channel with training statistics. `n_train` / `n_heldout` (0: all) keep the
first rows; the final training loss is measured on the first `n_train_eval`
training rows (the engine evaluates a split in one batch). The last
`validation_fraction` of the training rows (after the `n_train` cap) pick
learning rates. The trivial predictor (the training label frequencies) has
loss close to log(10). Converged:
smoothed training cross-entropy <= `target`.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gradbench.tasks import base

DESCRIPTION = "CIFAR-10 from local pickle files (path or $CIFAR10_DIR; cross-entropy, accuracy; test batch held out)"

DEFAULT_STEPS = 2000

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
HELDOUT_FILE = "test_batch"
ROW = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class Config:
    """Suite `[task]` keys."""

    path: str = ""  # empty: $CIFAR10_DIR
    n_train: int = 0  # 0: all 50000
    n_heldout: int = 0  # 0: all 10000
    n_train_eval: int = 10000  # 0: the whole training split
    validation_fraction: float = 0.1
    batch_size: int = 128
    target: float = 1.0

    def __post_init__(self):
        if min(self.n_train, self.n_heldout, self.n_train_eval) < 0 or self.batch_size < 1 or self.target <= 0:
            raise ValueError("n_train, n_heldout and n_train_eval must be >= 0 (0: all), batch_size >= 1 "
                             "and target > 0")
        if not 0 < self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in (0, 1)")


def directory(config: Config) -> Path:
    """The data directory the config names; ValueError when there is none."""
    name = config.path or os.environ.get("CIFAR10_DIR", "")
    if not name:
        raise ValueError("no CIFAR-10 directory: set the task key `path` or the environment variable CIFAR10_DIR")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(f"CIFAR-10 directory {str(path)!r} does not exist or is not a directory")
    return path


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch as (images (N, 32, 32, 3) uint8, labels (N,) int32); ValueError naming the file if bad."""
    if not file.is_file():
        raise ValueError(f"CIFAR-10 file {str(file)!r} is missing")
    try:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as e:  # what a corrupt or hostile pickle raises
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"CIFAR-10 file {str(file)!r} is not a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != ROW or data.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 file {str(file)!r}: data must be uint8 rows of {ROW} values, "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"CIFAR-10 file {str(file)!r}: need one integer label in 0..9 per row, "
                         f"got {labels.dtype} {labels.shape} for {data.shape[0]} rows")
    # Rows are channel-major (C, H, W); models want channels last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def read(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits of a CIFAR-10 directory as uint8 images and int32 labels."""
    train = [read_batch(path / name) for name in TRAIN_FILES]
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            "heldout": read_batch(path / HELDOUT_FILE)}

def data_bytes(config: Config) -> int:
    """Bytes this config's data takes to make (its arrays and the intermediates beside them), known before `make`
    allocates anything: the harness refuses a task that cannot fit before making it."""
    train = min(config.n_train or 50_000, 50_000)
    heldout = min(config.n_heldout or 10_000, 10_000)
    # every file read as uint8, then the kept rows as float32 (scaled, standardised, on the device)
    return 60_000 * 3073 + (train + heldout) * 3072 * 4 * 3 + (train + heldout) * 8


def make(config: Config) -> base.Task:
    """Reads the directory, applies the caps and standardises per channel with training statistics."""
    raw = read(directory(config))
    (x_train, y_train), (x_heldout, y_heldout) = raw["train"], raw["heldout"]
    if config.n_train:
        x_train, y_train = x_train[: config.n_train], y_train[: config.n_train]
    if config.n_heldout:
        x_heldout, y_heldout = x_heldout[: config.n_heldout], y_heldout[: config.n_heldout]
    scaled = x_train.astype(np.float32) / 255.0
    mean, std = scaled.mean((0, 1, 2)), scaled.std((0, 1, 2))
    std = np.where(std > 0, std, 1.0)  # a constant channel (tiny fixtures) stays finite

    def standardise(x):
        return jnp.asarray((x.astype(np.float32) / 255.0 - mean) / std)

    train, validation = base.split_off(standardise(x_train), jnp.asarray(y_train), config.validation_fraction)
    train_eval = tuple(a[: config.n_train_eval or None] for a in train)
    return base.classification(train, validation, (standardise(x_heldout), jnp.asarray(y_heldout)),
                               train_eval=train_eval,
                               batch_size=config.batch_size, n_classes=10, target=config.target)
