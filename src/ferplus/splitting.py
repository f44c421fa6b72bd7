"""Splitting the prepared dataset into train, val and test, by one of three arrangements.

- usage: the FER2013 Usage column as given: Training is train, PublicTest is val and PrivateTest
  is test. This is the arrangement of the FER+ paper (Barsoum et al. 2016).
- merged: Training and PublicTest together form the training pool, PrivateTest is test, and a
  class-stratified val fraction is carved from the pool.
- stratified: Usage is ignored, and class-stratified val and test fractions are drawn from all
  images.

Stratification is by the majority emotion. Each class is shuffled with a generator seeded by
base.seed. Each held-out part then takes round(class size x fraction) of its images, rounding
halves up, so every class's count in a part is within half an image of size x fraction. A class
too small for that rule keeps at least one image in train: when the rounded counts would leave
train without the class, val gives its images back first, then test. So a class with 1 image
always stays in train.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ferplus import EMOTIONS, USAGES
from ferplus.dataset import Dataset, save_dataset
from ferplus.fileio import atomic_path, save_json
from ferplus.params import check_choice
from ferplus.votes import majority_emotions

ARRANGEMENTS = ("usage", "merged", "stratified")

USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
"""The split of each FER2013 Usage in the `usage` arrangement."""


def held_out_counts(class_size: int, fractions: tuple[float, ...]) -> list[int]:
    """Return how many images of one class each held-out part takes; train keeps the rest.

    Each count is class_size x fraction rounded half up. When the counts would take every image,
    the parts give images back in order (the first part first) until train keeps one.
    """
    counts = [int(np.floor(class_size * fraction + 0.5)) for fraction in fractions]
    for part in range(len(counts)):
        excess = sum(counts) - (class_size - 1)
        if excess <= 0:
            break
        counts[part] -= min(excess, counts[part])
    return counts


def stratified_partition(
    labels: np.ndarray, fractions: tuple[float, ...], seed: int
) -> list[np.ndarray]:
    """Partition the positions of `labels` per class into train and one part per fraction.

    Returns [train, part for fractions[0], ...], each an ascending int64 position array. The
    same labels, fractions and seed give the same partition.
    """
    if sum(fractions) >= 1:
        raise ValueError(f"the held-out fractions {fractions} must sum to less than 1")
    generator = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        start = 0
        for part, count in enumerate(held_out_counts(len(members), fractions), start=1):
            parts[part].append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(chunks or [np.empty(0, dtype=np.int64)])) for chunks in parts]


def _check_usages(index: pd.DataFrame) -> np.ndarray:
    """Return the Usage column as strings, raising ValueError on a value outside USAGES."""
    usages = index["usage"].to_numpy(dtype=str)
    unknown = np.flatnonzero(~np.isin(usages, USAGES))
    if len(unknown):
        row = int(unknown[0])
        raise ValueError(
            f"image {index['image_name'].iloc[row]} (row {row} of index.csv) has usage "
            f"{str(usages[row])!r}; expected one of {', '.join(USAGES)}"
        )
    return usages


def split_positions(
    dataset: Dataset,
    arrangement: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    """Return the ascending positions of each split ("train", "val", "test") in `dataset`.

    val_fraction applies to the merged and stratified arrangements, test_fraction to stratified
    only, and seed to both. Every image lands in exactly one split.
    """
    check_choice("split arrangement", arrangement, ARRANGEMENTS)
    if arrangement == "merged" and val_fraction >= 1:
        raise ValueError(f"split.val_fraction is {val_fraction}; it must be less than 1")
    if arrangement == "stratified" and val_fraction + test_fraction >= 1:
        raise ValueError(
            f"split.val_fraction ({val_fraction}) + split.test_fraction ({test_fraction}) "
            "must be less than 1"
        )
    labels = majority_emotions(dataset.emotions_multi)

    if arrangement == "stratified":
        train, val, test = stratified_partition(labels, (val_fraction, test_fraction), seed)
        return {"train": train, "val": val, "test": test}

    usages = _check_usages(dataset.index)
    if arrangement == "usage":
        return {
            split: np.flatnonzero(usages == usage).astype(np.int64)
            for usage, split in USAGE_SPLITS.items()
        }

    pool = np.flatnonzero(usages != "PrivateTest")
    pool_train, pool_val = stratified_partition(labels[pool], (val_fraction,), seed)
    return {
        "train": pool[pool_train],
        "val": pool[pool_val],
        "test": np.flatnonzero(usages == "PrivateTest").astype(np.int64),
    }


def check_splits(positions: dict[str, np.ndarray], arrangement: str) -> None:
    """Raise ValueError when train or test is empty, because training or evaluation needs them."""
    for split in ("train", "test"):
        if len(positions[split]) == 0:
            raise ValueError(
                f"the {arrangement!r} arrangement leaves the {split} split empty; "
                "check the Usage values of data/prepared/index.csv or choose "
                "split.arrangement: stratified"
            )


def count_split(dataset: Dataset) -> dict:
    """Count the images of one split, per majority emotion and per FER2013 Usage."""
    labels = majority_emotions(dataset.emotions_multi)
    emotion_counts = np.bincount(labels, minlength=len(EMOTIONS))
    usage_counts = dataset.index["usage"].value_counts()
    return {
        "images": len(dataset),
        "emotions": {emotion: int(emotion_counts[i]) for i, emotion in enumerate(EMOTIONS)},
        "usages": {usage: int(usage_counts.get(usage, 0)) for usage in USAGES},
    }


def split_report(
    splits: dict[str, Dataset],
    arrangement: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict:
    """Build the report.json content: the settings that shaped the split and every split's counts.

    A setting that the arrangement does not use is null, so that changing it leaves the report
    unchanged.
    """
    random = arrangement != "usage"
    return {
        "arrangement": arrangement,
        "seed": seed if random else None,
        "val_fraction": val_fraction if random else None,
        "test_fraction": test_fraction if arrangement == "stratified" else None,
        "images": sum(len(dataset) for dataset in splits.values()),
        "splits": {name: count_split(dataset) for name, dataset in splits.items()},
    }


def write_splits(directory: str | os.PathLike, splits: dict[str, Dataset], report: dict) -> None:
    """Write one dataset directory per split and report.json, all under `directory` at once.

    The whole directory is built under a temporary name and renamed on success, so a failure
    leaves any previous `directory` untouched.
    """
    with atomic_path(directory) as temporary:
        for name, dataset in splits.items():
            save_dataset(Path(temporary) / name, dataset)
        save_json(Path(temporary) / "report.json", report)
