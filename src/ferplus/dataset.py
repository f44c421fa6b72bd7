"""The on-disk dataset format shared by the ingest, split, train and evaluate stages.

A dataset directory holds:
- images.npy: (N, 48, 48, 1) uint8 grayscale pixels, 0-255;
- emotions_multi.npy: (N, 8) float32 vote distribution over EMOTIONS, rows sum to 1;
- emotions_single.npy: (N, 8) float32 one-hot of the majority emotion;
- index.csv: one row per image with its source, image name, FER2013 Usage and 10 raw votes.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ferplus import VOTE_COLUMNS
from ferplus.fileio import load_array, save_array

INDEX_COLUMNS = ("source", "image_name", "usage") + VOTE_COLUMNS
"""Columns of index.csv: where the image came from, its Usage, and its 10 raw votes."""

ARRAY_NAMES = ("images", "emotions_multi", "emotions_single")


@dataclass
class Dataset:
    """Images with their labels and index rows, all in the same order."""

    images: np.ndarray
    emotions_multi: np.ndarray
    emotions_single: np.ndarray
    index: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, positions: np.ndarray) -> "Dataset":
        """Return the rows at `positions`, in that order."""
        return Dataset(
            images=self.images[positions],
            emotions_multi=self.emotions_multi[positions],
            emotions_single=self.emotions_single[positions],
            index=self.index.iloc[positions].reset_index(drop=True),
        )

    @property
    def votes(self) -> np.ndarray:
        """The (N, 10) raw vote counts from the index, in VOTE_COLUMNS order."""
        return self.index[list(VOTE_COLUMNS)].to_numpy(dtype=np.int64)


def save_dataset(directory: str | os.PathLike, dataset: Dataset) -> None:
    """Write the three arrays and index.csv into `directory` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_NAMES:
        save_array(directory / f"{name}.npy", getattr(dataset, name))
    index_path = directory / "index.csv"
    temporary = index_path.with_name(".index.csv.tmp")
    dataset.index.to_csv(temporary, index=False, columns=list(INDEX_COLUMNS))
    os.replace(temporary, index_path)


def load_dataset(directory: str | os.PathLike) -> Dataset:
    """Read a dataset directory written by `save_dataset`, checking that its parts agree."""
    directory = Path(directory)
    arrays = {name: load_array(directory / f"{name}.npy") for name in ARRAY_NAMES}
    index = pd.read_csv(
        directory / "index.csv",
        dtype={"source": str, "image_name": str, "usage": str},
        keep_default_na=False,
    )
    lengths = {name: len(array) for name, array in arrays.items()} | {"index.csv": len(index)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{directory}: the dataset files disagree on the row count: {lengths}")
    return Dataset(index=index, **arrays)
