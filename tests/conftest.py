"""Shared test helpers: small raw FER+ inputs written in both layouts."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferplus import VOTE_COLUMNS
from ferplus.readers import FOLDER_USAGES, write_kaggle_csv

REPOSITORY = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("FERPLUS_DATA", REPOSITORY.parent / "shared" / "ferplus"))

USAGE_FOLDERS = {usage: folder for folder, usage in FOLDER_USAGES.items()}


def make_image(number: int) -> np.ndarray:
    """Return a 48x48 uint8 image that differs for every number: a gradient plus an offset."""
    rows, columns = np.mgrid[0:48, 0:48]
    return ((rows * 5 + columns * 3 + number * 37) % 256).astype(np.uint8)


def write_label_file(path: Path, rows: list[tuple[str, str, list[int]]], header=None) -> None:
    """Write a fer2013new.csv: rows of (Usage, image name, 10 votes)."""
    header = header or ",".join(("Usage", "Image name") + VOTE_COLUMNS)
    lines = [header] + [
        ",".join([usage, name] + [str(vote) for vote in votes]) for usage, name, votes in rows
    ]
    path.write_text("\n".join(lines) + "\n")


def write_csv_layout(raw_dir: Path, rows: list[tuple[str, str, list[int]]]) -> None:
    """Write fer2013.csv (image i = make_image(i)) and fer2013new.csv for the given rows."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack([make_image(number) for number in range(len(rows))])
    write_kaggle_csv(
        raw_dir / "fer2013.csv", images, [usage for usage, _, _ in rows], [0] * len(rows)
    )
    write_label_file(raw_dir / "fer2013new.csv", rows)


def write_folder_layout(raw_dir: Path, rows: list[tuple[str, str, list[int]]]) -> None:
    """Write the three FER+ folders with label.csv and PNGs (image i = make_image(i))."""
    for folder in FOLDER_USAGES:
        (raw_dir / folder).mkdir(parents=True, exist_ok=True)
    label_lines = {folder: [] for folder in FOLDER_USAGES}
    for number, (usage, name, votes) in enumerate(rows):
        folder = USAGE_FOLDERS[usage]
        Image.fromarray(make_image(number), mode="L").save(raw_dir / folder / name)
        cells = [name, '"(0, 0, 48, 48)"'] + [str(vote) for vote in votes]
        label_lines[folder].append(",".join(cells))
    for folder, lines in label_lines.items():
        (raw_dir / folder / "label.csv").write_text("\n".join(lines) + "\n" if lines else "")


@pytest.fixture
def real_data() -> Path:
    """The real FER+ files; tests that use them skip when they are absent."""
    if not (REAL_DATA / "FER2013Train" / "label.csv").is_file():
        pytest.skip(f"real FER+ data not found at {REAL_DATA} (set FERPLUS_DATA to its folder)")
    return REAL_DATA
