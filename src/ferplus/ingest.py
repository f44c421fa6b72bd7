"""The ingest stage's logic: raw FER+ files in either layout -> a labelled Dataset and a report."""

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ferplus import EMOTIONS, USAGES, VOTE_COLUMNS
from ferplus.dataset import INDEX_COLUMNS, Dataset
from ferplus.params import Setting
from ferplus.readers import (
    FOLDER_USAGES,
    RawDataError,
    VoteRows,
    read_fer2013new,
    read_folder_labels,
    read_kaggle_csv,
    read_pngs,
)
from ferplus.votes import (
    KEPT,
    VOTE_MODES,
    count_ties,
    majority_emotions,
    one_hot_majority,
    process_votes,
)

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "csv", "folders")
KAGGLE_FILE = "fer2013.csv"
LABEL_FILE = "fer2013new.csv"

# Reasons an image is dropped before its votes are looked at.
NO_IMAGE_NAME = "no_image_name"
DUPLICATE_NAME = "duplicate_name"

INGEST_SETTINGS = {
    "raw_dir": Setting(str),
    "layout": Setting(str, choices=LAYOUTS),
    "vote_mode": Setting(str, choices=VOTE_MODES),
    "remove_single_votes": Setting(bool),
    "keep_rejected": Setting(bool),
}


def detect_layout(raw_dir: str | os.PathLike, layout: str = "auto") -> str:
    """Return "csv" or "folders": the layout requested, or the one found in raw_dir for "auto"."""
    if layout not in LAYOUTS:
        raise ValueError(f"invalid layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise RawDataError(
            f"{raw_dir}: raw data folder not found; put fer2013.csv and fer2013new.csv, or the "
            "FER2013Train, FER2013Valid and FER2013Test folders there (see the README)"
        )
    if layout != "auto":
        return layout
    has_csv = (raw_dir / KAGGLE_FILE).is_file()
    has_folders = any((raw_dir / folder).is_dir() for folder in FOLDER_USAGES)
    if has_csv and has_folders:
        raise RawDataError(
            f"{raw_dir}: contains both {KAGGLE_FILE} and FER+ image folders; "
            "set ingest.layout to csv or folders"
        )
    if has_csv:
        return "csv"
    if has_folders:
        return "folders"
    raise RawDataError(
        f"{raw_dir}: found neither {KAGGLE_FILE} nor the FER2013Train, FER2013Valid and "
        "FER2013Test folders"
    )


def _duplicate_drops(image_names: list[str], votes: np.ndarray, sources: list[str]):
    """Mark later rows that repeat an earlier image name; the first occurrence is kept."""
    first_row: dict[str, int] = {}
    is_duplicate = np.zeros(len(image_names), dtype=bool)
    duplicates = []
    for row, name in enumerate(image_names):
        if not name:
            continue
        if name not in first_row:
            first_row[name] = row
            continue
        is_duplicate[row] = True
        kept_row = first_row[name]
        duplicates.append(
            {
                "image_name": name,
                "kept": sources[kept_row],
                "dropped": sources[row],
                "same_votes": bool(np.array_equal(votes[kept_row], votes[row])),
            }
        )
    return is_duplicate, duplicates


def _read_csv_layout(raw_dir: Path):
    labels = read_fer2013new(raw_dir / LABEL_FILE)
    kaggle = read_kaggle_csv(raw_dir / KAGGLE_FILE)
    kaggle_path, label_path = raw_dir / KAGGLE_FILE, raw_dir / LABEL_FILE
    if len(kaggle.usages) != len(labels.usages):
        raise RawDataError(
            f"{kaggle_path} has {len(kaggle.usages)} data rows but {label_path} has "
            f"{len(labels.usages)}; the files pair rows by position, so the counts must match"
        )
    usage_pairs = zip(kaggle.usages, labels.usages, strict=True)
    for row, (kaggle_usage, label_usage) in enumerate(usage_pairs):
        if kaggle_usage != label_usage:
            raise RawDataError(
                f"{kaggle_path}, line {kaggle.line_numbers[row]} has Usage {kaggle_usage!r} but "
                f"{label_path}, line {labels.line_numbers[row]} has {label_usage!r}; the rows "
                "pair by position, so the files are out of step"
            )
    sources = [f"{KAGGLE_FILE}:{line}" for line in kaggle.line_numbers]
    return labels, sources, lambda rows: kaggle.images[rows]


def _read_folder_layout(raw_dir: Path):
    parts = []
    for folder, usage in FOLDER_USAGES.items():
        if not (raw_dir / folder).is_dir():
            raise RawDataError(
                f"{raw_dir / folder}: folder not found; the FER+ layout needs "
                f"{', '.join(FOLDER_USAGES)}"
            )
        parts.append((folder, read_folder_labels(raw_dir / folder, usage)))
    labels = VoteRows(
        usages=[usage for _, rows in parts for usage in rows.usages],
        image_names=[name for _, rows in parts for name in rows.image_names],
        votes=np.concatenate([rows.votes for _, rows in parts]),
        line_numbers=[line for _, rows in parts for line in rows.line_numbers],
    )
    sources = [f"{folder}/{name}" for folder, rows in parts for name in rows.image_names]

    def read_images(rows: np.ndarray) -> np.ndarray:
        paths = [raw_dir / sources[row] for row in rows]
        return read_pngs(paths)[..., np.newaxis]

    return labels, sources, read_images


def ingest(
    raw_dir: str | os.PathLike,
    layout: str = "auto",
    vote_mode: str = "crossentropy",
    remove_single_votes: bool = True,
    keep_rejected: bool = False,
) -> tuple[Dataset, dict]:
    """Read raw FER+ files and label every image by the chosen FER+ vote mode.

    Returns the kept images as a Dataset, in raw file order, and a report of what was read,
    kept and dropped (per reason and per Usage), class counts and duplicates.
    """
    raw_dir = Path(raw_dir)
    layout = detect_layout(raw_dir, layout)
    if layout == "csv":
        labels, sources, read_images = _read_csv_layout(raw_dir)
        label_source = LABEL_FILE
    else:
        labels, sources, read_images = _read_folder_layout(raw_dir)
        label_source = "label.csv of each FER+ folder"
    logger.info("read %d rows from %s (%s layout)", len(sources), raw_dir, layout)

    # Drop order: a row without an image name (FER+ marks not-a-face images that way), then a
    # repeated name, then the vote rule's verdict.
    names = labels.image_names
    distributions, reasons = process_votes(
        labels.votes, vote_mode, drop_single_votes=remove_single_votes, keep_rejected=keep_rejected
    )
    reasons = reasons.astype(object)
    is_duplicate, duplicates = _duplicate_drops(names, labels.votes, sources)
    reasons[is_duplicate] = DUPLICATE_NAME
    reasons[np.array([not name for name in names], dtype=bool)] = NO_IMAGE_NAME
    kept_rows = np.flatnonzero(reasons == KEPT)

    images = read_images(kept_rows)
    emotions_multi = distributions[kept_rows]
    index = pd.DataFrame(
        {
            "source": [sources[row] for row in kept_rows],
            "image_name": [names[row] for row in kept_rows],
            "usage": [labels.usages[row] for row in kept_rows],
        }
    )
    for position, column in enumerate(VOTE_COLUMNS):
        index[column] = labels.votes[kept_rows, position]
    dataset = Dataset(
        images=images,
        emotions_multi=emotions_multi,
        emotions_single=one_hot_majority(emotions_multi),
        index=index[list(INDEX_COLUMNS)],
    )

    report = _build_report(labels, reasons, dataset, duplicates)
    report = {
        "layout": layout,
        "label_source": label_source,
        "vote_mode": vote_mode,
        "remove_single_votes": remove_single_votes,
        "keep_rejected": keep_rejected,
    } | report
    return dataset, report


def _build_report(labels: VoteRows, reasons: np.ndarray, dataset: Dataset, duplicates) -> dict:
    usages = np.array(labels.usages)
    emotions = np.array(EMOTIONS)[majority_emotions(dataset.emotions_multi)]
    kept_usages = dataset.index["usage"].to_numpy()
    per_usage = {}
    for usage in USAGES:
        in_usage = usages == usage
        dropped = Counter(reasons[in_usage & (reasons != KEPT)])
        per_usage[usage] = {
            "read": int(in_usage.sum()),
            "kept": int((reasons[in_usage] == KEPT).sum()),
            "dropped": dict(sorted(dropped.items())),
            "emotions": {
                emotion: int(((kept_usages == usage) & (emotions == emotion)).sum())
                for emotion in EMOTIONS
            },
        }
    totals = Counter(int(total) for total in labels.votes.sum(axis=1))
    return {
        "images_read": len(reasons),
        "images_kept": len(dataset),
        "dropped": dict(sorted(Counter(reasons[reasons != KEPT]).items())),
        "emotions": {emotion: int((emotions == emotion).sum()) for emotion in EMOTIONS},
        "per_usage": per_usage,
        "vote_totals": {str(total): count for total, count in sorted(totals.items())},
        "majority_ties": count_ties(dataset.emotions_multi),
        "duplicates": duplicates,
    }
