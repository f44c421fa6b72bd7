"""Tests of the split arrangements, the small-class rule, the report and the split stage."""

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferplus import EMOTIONS, USAGES, VOTE_COLUMNS
from ferplus.dataset import Dataset, load_dataset, save_dataset
from ferplus.splitting import (
    check_splits,
    held_out_counts,
    split_positions,
    split_report,
    stratified_partition,
    write_splits,
)

REPOSITORY = Path(__file__).resolve().parents[1]

# Images per majority emotion, in EMOTIONS order: 40 in all, fear has none, contempt has one.
CLASS_SIZES = (10, 10, 8, 6, 3, 2, 0, 1)


def make_dataset() -> Dataset:
    """Build 40 images: image i has every pixel equal to i, and its Usage cycles with i % 5.

    Positions 0-9 are neutral, 10-19 happiness, 20-27 surprise, 28-33 sadness, 34-36 anger,
    37-38 disgust and 39 contempt. Usage: i % 5 in (0, 1, 2) is Training, 3 is PublicTest and
    4 is PrivateTest.
    """
    labels = np.repeat(np.arange(len(EMOTIONS)), CLASS_SIZES)
    count = len(labels)
    images = np.broadcast_to(
        np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 48, 48, 1)
    ).copy()
    # Each image gets 8 votes for its emotion and 2 for the next one, so the majority is clear.
    votes = np.zeros((count, len(VOTE_COLUMNS)), dtype=np.int64)
    votes[np.arange(count), labels] = 8
    votes[np.arange(count), (labels + 1) % len(EMOTIONS)] = 2
    emotions_multi = (votes[:, : len(EMOTIONS)] / 10).astype(np.float32)
    emotions_single = np.eye(len(EMOTIONS), dtype=np.float32)[labels]
    usages = np.array(["Training", "Training", "Training", "PublicTest", "PrivateTest"])
    index = pd.DataFrame(
        {
            "source": "hand-made",
            "image_name": [f"image{position:02d}.png" for position in range(count)],
            "usage": usages[np.arange(count) % 5],
        }
    )
    for column, name in enumerate(VOTE_COLUMNS):
        index[name] = votes[:, column]
    return Dataset(images, emotions_multi, emotions_single, index)


def labels_of(dataset: Dataset) -> np.ndarray:
    return np.argmax(dataset.emotions_multi, axis=1)


def test_held_out_counts_round_half_up():
    assert held_out_counts(10, (0.1, 0.2)) == [1, 2]
    assert held_out_counts(5, (0.1,)) == [1]
    assert held_out_counts(4, (0.1,)) == [0]


def test_held_out_counts_one_image_stays():
    assert held_out_counts(1, (0.5, 0.4)) == [0, 0]


def test_held_out_counts_val_gives_back_first():
    # round(2 x 0.4) = 1 for both parts would leave train empty, so val returns its image.
    assert held_out_counts(2, (0.4, 0.4)) == [0, 1]


def test_usage_arrangement_membership():
    dataset = make_dataset()
    positions = split_positions(dataset, "usage", seed=1, val_fraction=0.1, test_fraction=0.1)
    everything = np.arange(40)
    assert positions["train"].tolist() == everything[everything % 5 < 3].tolist()
    assert positions["val"].tolist() == everything[everything % 5 == 3].tolist()
    assert positions["test"].tolist() == everything[everything % 5 == 4].tolist()


def test_usage_arrangement_ignores_seed():
    dataset = make_dataset()
    first = split_positions(dataset, "usage", seed=1, val_fraction=0.1, test_fraction=0.1)
    second = split_positions(dataset, "usage", seed=2, val_fraction=0.1, test_fraction=0.1)
    for name in ("train", "val", "test"):
        assert first[name].tolist() == second[name].tolist()


def test_merged_arrangement_membership():
    dataset = make_dataset()
    positions = split_positions(dataset, "merged", seed=3, val_fraction=0.2, test_fraction=0.1)
    everything = np.arange(40)
    pool = everything[everything % 5 != 4]
    assert positions["test"].tolist() == everything[everything % 5 == 4].tolist()
    assert sorted(positions["train"].tolist() + positions["val"].tolist()) == pool.tolist()


def test_merged_val_fraction_per_class():
    dataset = make_dataset()
    positions = split_positions(dataset, "merged", seed=3, val_fraction=0.2, test_fraction=0.1)
    labels = labels_of(dataset)
    pool = np.flatnonzero(np.arange(40) % 5 != 4)
    for emotion in range(len(EMOTIONS)):
        pool_size = int((labels[pool] == emotion).sum())
        val_size = int((labels[positions["val"]] == emotion).sum())
        assert abs(val_size - 0.2 * pool_size) <= 1, EMOTIONS[emotion]


def test_stratified_fractions_per_class():
    dataset = make_dataset()
    positions = split_positions(dataset, "stratified", seed=5, val_fraction=0.2, test_fraction=0.3)
    labels = labels_of(dataset)
    for emotion, size in enumerate(CLASS_SIZES):
        val_size = int((labels[positions["val"]] == emotion).sum())
        test_size = int((labels[positions["test"]] == emotion).sum())
        if size >= 3:
            assert abs(val_size - 0.2 * size) <= 1, EMOTIONS[emotion]
            assert abs(test_size - 0.3 * size) <= 1, EMOTIONS[emotion]


def test_stratified_exact_counts():
    dataset = make_dataset()
    positions = split_positions(dataset, "stratified", seed=5, val_fraction=0.2, test_fraction=0.3)
    labels = labels_of(dataset)
    # Per class: val = round(0.2 x size) and test = round(0.3 x size), halves up. Disgust
    # (2 images) rounds 0.4 down and 0.6 up; contempt (1 image) rounds both down.
    expected_val = [2, 2, 2, 1, 1, 0, 0, 0]
    expected_test = [3, 3, 2, 2, 1, 1, 0, 0]
    assert np.bincount(labels[positions["val"]], minlength=8).tolist() == expected_val
    assert np.bincount(labels[positions["test"]], minlength=8).tolist() == expected_test


@pytest.mark.parametrize("arrangement", ["merged", "stratified"])
def test_one_image_class_stays_in_train(arrangement):
    dataset = make_dataset()
    # Contempt's only image (position 39) joins the training pool of the merged arrangement.
    dataset.index.loc[39, "usage"] = "Training"
    # round(1 x 0.5) = 1 would move it to val, but val gives it back to train.
    positions = split_positions(dataset, arrangement, seed=7, val_fraction=0.5, test_fraction=0.4)
    assert 39 in positions["train"]
    assert 39 not in positions["val"]
    assert 39 not in positions["test"]


@pytest.mark.parametrize("arrangement", ["usage", "merged", "stratified"])
def test_every_image_in_one_split(arrangement):
    dataset = make_dataset()
    positions = split_positions(dataset, arrangement, seed=11, val_fraction=0.2, test_fraction=0.2)
    joined = np.concatenate([positions["train"], positions["val"], positions["test"]])
    assert len(joined) == 40
    assert sorted(joined.tolist()) == list(range(40))


@pytest.mark.parametrize("arrangement", ["merged", "stratified"])
def test_same_seed_same_split(arrangement):
    dataset = make_dataset()
    first = split_positions(dataset, arrangement, seed=42, val_fraction=0.2, test_fraction=0.2)
    second = split_positions(dataset, arrangement, seed=42, val_fraction=0.2, test_fraction=0.2)
    for name in ("train", "val", "test"):
        assert first[name].tolist() == second[name].tolist(), name


@pytest.mark.parametrize("arrangement", ["merged", "stratified"])
def test_other_seed_other_split(arrangement):
    dataset = make_dataset()
    first = split_positions(dataset, arrangement, seed=42, val_fraction=0.2, test_fraction=0.2)
    second = split_positions(dataset, arrangement, seed=43, val_fraction=0.2, test_fraction=0.2)
    assert first["val"].tolist() != second["val"].tolist()


def test_stratified_partition_empty_labels():
    train, val = stratified_partition(np.empty(0, dtype=np.int64), (0.2,), seed=1)
    assert train.tolist() == []
    assert val.tolist() == []


def test_split_unknown_arrangement_raises():
    with pytest.raises(ValueError, match="'usage', 'merged', 'stratified'"):
        split_positions(make_dataset(), "random", seed=1, val_fraction=0.1, test_fraction=0.1)


def test_split_fractions_too_large_raise():
    with pytest.raises(ValueError, match="split.test_fraction"):
        split_positions(make_dataset(), "stratified", seed=1, val_fraction=0.5, test_fraction=0.5)


def test_split_unknown_usage_raises():
    dataset = make_dataset()
    dataset.index.loc[6, "usage"] = "Validation"
    with pytest.raises(
        ValueError, match=r"image06.png \(row 6 of index.csv\) has usage 'Validation'"
    ):
        split_positions(dataset, "usage", seed=1, val_fraction=0.1, test_fraction=0.1)


def test_check_splits_empty_test_raises():
    positions = {"train": np.arange(3), "val": np.arange(0), "test": np.arange(0)}
    with pytest.raises(ValueError, match="test split empty"):
        check_splits(positions, "usage")


def test_split_report_counts():
    dataset = make_dataset()
    positions = split_positions(dataset, "usage", seed=1, val_fraction=0.1, test_fraction=0.1)
    splits = {name: dataset.subset(split) for name, split in positions.items()}
    report = split_report(splits, "usage", seed=1, val_fraction=0.1, test_fraction=0.1)
    assert report["images"] == 40
    assert report["seed"] is None
    assert report["splits"]["val"]["images"] == 8
    # Val contains positions 3, 8, 13, ..., 38: neutral 3, 8; happiness 13, 18; surprise 23;
    # sadness 28, 33; disgust 38.
    assert report["splits"]["val"]["emotions"] == {
        "neutral": 2,
        "happiness": 2,
        "surprise": 1,
        "sadness": 2,
        "anger": 0,
        "disgust": 1,
        "fear": 0,
        "contempt": 0,
    }
    assert report["splits"]["train"]["usages"] == {
        "Training": 24,
        "PublicTest": 0,
        "PrivateTest": 0,
    }
    assert set(report["splits"]["test"]["usages"]) == set(USAGES)


def test_write_splits_failure_keeps_previous(tmp_path):
    dataset = make_dataset()
    target = tmp_path / "split"
    target.mkdir()
    (target / "marker.txt").write_text("previous")
    # A set is not JSON serializable, so writing report.json fails after the datasets.
    with pytest.raises(TypeError):
        write_splits(target, {"train": dataset}, {"broken": {1, 2}})
    assert sorted(path.name for path in target.iterdir()) == ["marker.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["split"]


def write_project(root: Path, arrangement: str, seed: int) -> None:
    save_dataset(root / "data" / "prepared", make_dataset())
    (root / "params.yaml").write_text(
        f"base:\n  seed: {seed}\n"
        f"split:\n  arrangement: {arrangement}\n  val_fraction: 0.2\n  test_fraction: 0.2\n"
    )


def hash_files(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def run_split_stage() -> None:
    runpy.run_path(str(REPOSITORY / "stages" / "split.py"), run_name="__main__")


def test_split_stage_writes_datasets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, "stratified", seed=9)
    run_split_stage()
    split_dir = tmp_path / "data" / "split"
    assert sorted(path.name for path in split_dir.iterdir()) == [
        "report.json",
        "test",
        "train",
        "val",
    ]
    report = json.loads((split_dir / "report.json").read_text())
    sizes = {name: len(load_dataset(split_dir / name)) for name in ("train", "val", "test")}
    assert sum(sizes.values()) == 40
    for name, size in sizes.items():
        assert report["splits"][name]["images"] == size, name
    test = load_dataset(split_dir / "test")
    # Pixel values are the original positions, so the index rows must follow the images.
    names = [f"image{int(image[0, 0, 0]):02d}.png" for image in test.images]
    assert test.index["image_name"].tolist() == names


def test_split_stage_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, "merged", seed=9)
    run_split_stage()
    first = hash_files(tmp_path / "data" / "split")
    run_split_stage()
    second = hash_files(tmp_path / "data" / "split")
    assert len(first) == 13
    assert first == second


def test_split_stage_seed_changes_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, "stratified", seed=9)
    run_split_stage()
    first = hash_files(tmp_path / "data" / "split")
    write_project(tmp_path, "stratified", seed=10)
    run_split_stage()
    second = hash_files(tmp_path / "data" / "split")
    assert first["val/index.csv"] != second["val/index.csv"]
