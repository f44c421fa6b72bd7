"""Epoch-level resume checkpoints of an interrupted training run.

A resume folder holds, for the last finished epoch k:
- epoch-k/ with model.weights.h5 (the model and optimizer state, including the step counter that
  positions the learning-rate schedule) and state.json (the fingerprint, the epoch count and the
  best epoch so far);
- best-j.npz: the model weights of the best epoch j so far, which state.json names.

Each epoch folder appears whole by a rename, after the best weights it names were written, and
older files are deleted only after that: an interruption at any point leaves the last complete
checkpoint readable. A checkpoint is used only when its fingerprint, a hash of the train params,
base.seed and the training and validation arrays, matches the run's.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ferplus.dataset import ARRAY_NAMES, Dataset
from ferplus.fileio import atomic_path, save_json

logger = logging.getLogger(__name__)

EPOCH_FOLDER = re.compile(r"epoch-(\d+)")
WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"


def dataset_digest(dataset: Dataset) -> dict:
    """Return the shape and SHA-256 of each array of `dataset`, for a fingerprint."""
    digest = {}
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(getattr(dataset, name))
        digest[name] = {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sha256": hashlib.sha256(memoryview(array).cast("B")).hexdigest(),
        }
    return digest


def training_fingerprint(params: dict, seed: int, train: Dataset, validation: Dataset) -> str:
    """Return a hash that changes when the train params, the seed or either dataset changes."""
    identity = {
        "params": params,
        "seed": seed,
        "train": dataset_digest(train),
        "validation": dataset_digest(validation),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass
class ResumeState:
    """The record a checkpoint keeps besides the weights."""

    fingerprint: str
    epochs_done: int  # epochs finished; the resumed run starts at this epoch (counted from 0)
    best_epoch: int | None  # the best epoch so far (counted from 0), None before any
    best_value: float | None  # its monitored value
    best_weights_file: str | None  # the file name of its weights in the resume folder


class ResumeStore:
    """The resume folder of one training run: `directory` is written, `source` is read.

    They differ only on a non-chief worker of a multi-worker run, which reads the chief's
    checkpoint but writes its own to a temporary folder.

    NOTE: a multi-worker run resumes correctly only when every worker can read the chief's
    folder (one machine or a shared file system). A worker that finds no checkpoint starts at
    epoch 0 while the chief resumes, so their step counts differ and the run hangs or fails.
    """

    def __init__(self, directory: str | os.PathLike, source: str | os.PathLike | None = None):
        self.directory = Path(directory)
        self.source = Path(source) if source is not None else self.directory

    def latest_folder(self) -> Path | None:
        """Return the complete epoch folder with the highest epoch in `source`, if any."""
        if not self.source.is_dir():
            return None
        folders = [
            (int(match.group(1)), path)
            for path in self.source.iterdir()
            if path.is_dir() and (match := EPOCH_FOLDER.fullmatch(path.name))
        ]
        return max(folders)[1] if folders else None

    def load_state(self, fingerprint: str) -> ResumeState | None:
        """Return the latest checkpoint's state when its fingerprint matches, else None."""
        folder = self.latest_folder()
        if folder is None:
            return None
        try:
            state = ResumeState(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            logger.warning("ignoring the unreadable resume checkpoint %s: %s", folder, error)
            return None
        if state.fingerprint != fingerprint:
            logger.warning(
                "ignoring the resume checkpoint %s: the train params, base.seed or the data "
                "changed since it was written",
                folder,
            )
            return None
        return state

    def restore(self, model: keras.Model, state: ResumeState) -> list[np.ndarray] | None:
        """Load the checkpoint's model and optimizer state into `model`; return the best weights.

        The optimizer must be built (its variables created) before this call.
        """
        model.load_weights(self.source / f"epoch-{state.epochs_done}" / WEIGHTS_FILE)
        if state.best_weights_file is None:
            return None
        with np.load(self.source / state.best_weights_file, allow_pickle=False) as stored:
            return [stored[f"arr_{position}"] for position in range(len(stored.files))]

    def save(self, model: keras.Model, state: ResumeState, new_best_weights: list | None) -> None:
        """Write the checkpoint of `state.epochs_done` finished epochs, then delete older ones.

        `new_best_weights` are the model weights when this epoch is the new best, else None.
        """
        if new_best_weights is not None:
            with atomic_path(self.directory / state.best_weights_file) as temporary:
                with open(temporary, "wb") as stream:
                    np.savez(stream, *new_best_weights)
        folder = self.directory / f"epoch-{state.epochs_done}"
        with atomic_path(folder) as temporary:
            temporary.mkdir()
            model.save_weights(temporary / WEIGHTS_FILE)
            save_json(temporary / STATE_FILE, state.__dict__)
        for path in self.directory.iterdir():
            if path.name in (folder.name, state.best_weights_file):
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def clear(self) -> None:
        """Delete the resume folder after a finished run."""
        shutil.rmtree(self.directory, ignore_errors=True)
