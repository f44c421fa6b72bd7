"""Time the ingest stage on the real FER+ data, from both raw layouts.

Prints, in one run:
- full ingest from a Kaggle-format fer2013.csv + fer2013new.csv. It is compared with parsing
  fer2013.csv row by row with the csv module and str.split, as the FER+ reference script does
  (goal: at least 6x faster, and about 1.5 s or less on a 2-core machine);
- full ingest from the FER+ folders (35,710 PNGs; goal: about 2 s or less).

There is no real fer2013.csv here, so the script first writes one in the Kaggle format from the
PNG folders, paired by position with fer2013.csv's rows (rows without an image name get a blank
image). Each figure is the fastest of --repeats runs, so file-cache warm-up does not count.

Usage: python benchmarks/ingest_speed.py [--data ../shared/ferplus] [--work /tmp/ferplus-bench]
"""

import argparse
import csv
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from ferplus.ingest import ingest
from ferplus.readers import (
    FOLDER_USAGES,
    read_fer2013new,
    read_folder_labels,
    read_pngs,
    write_kaggle_csv,
)

REPOSITORY = Path(__file__).resolve().parents[1]


def write_kaggle_copy(data_dir: Path, work_dir: Path) -> Path:
    """Write fer2013.csv and copy fer2013new.csv into work_dir; reuse them if present."""
    raw_dir = work_dir / "raw"
    kaggle_path = raw_dir / "fer2013.csv"
    if kaggle_path.is_file():
        return raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / "fer2013new.csv", raw_dir / "fer2013new.csv")
    labels = read_fer2013new(data_dir / "fer2013new.csv")
    folder_of = {}
    for folder, usage in FOLDER_USAGES.items():
        for name in read_folder_labels(data_dir / folder, usage).image_names:
            folder_of[name] = folder
    named_rows = [row for row, name in enumerate(labels.image_names) if name]
    paths = [data_dir / folder_of[labels.image_names[row]] / labels.image_names[row]
             for row in named_rows]
    images = np.zeros((len(labels.image_names), 48, 48), dtype=np.uint8)
    images[named_rows] = read_pngs(paths)
    temporary = kaggle_path.with_suffix(".tmp")
    write_kaggle_csv(temporary, images, labels.usages, [0] * len(images))
    os.replace(temporary, kaggle_path)
    return raw_dir


def parse_row_by_row(path: Path) -> np.ndarray:
    """Parse fer2013.csv with the csv module and str.split, one row at a time."""
    images = []
    with open(path, newline="") as stream:
        reader = csv.reader(stream)
        header = [name.strip() for name in next(reader)]
        pixels_column = header.index("pixels")
        for row in reader:
            pixels = [int(value) for value in row[pixels_column].split()]
            images.append(np.asarray(pixels, dtype=np.uint8).reshape(48, 48))
    return np.stack(images)


def fastest(repeats: int, function) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY.parent / "shared" / "ferplus",
                        help="folder with the FER+ folders and fer2013new.csv")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ferplus-bench"),
                        help="folder for the generated Kaggle-format fer2013.csv (about 290 MB)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; the fastest counts"
    )
    arguments = parser.parse_args()

    raw_dir = write_kaggle_copy(arguments.data, arguments.work)
    kaggle_path = raw_dir / "fer2013.csv"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
          f"{platform.python_version()}, NumPy {np.__version__}")
    print(f"fer2013.csv: {kaggle_path.stat().st_size / 1e6:.0f} MB")

    csv_seconds, (dataset, _) = fastest(arguments.repeats, lambda: ingest(raw_dir, layout="csv"))
    baseline_seconds, baseline = fastest(1, lambda: parse_row_by_row(kaggle_path))
    folder_seconds, (folder_dataset, _) = fastest(
        arguments.repeats, lambda: ingest(arguments.data, layout="folders")
    )

    print(f"ingest, Kaggle CSV layout: {csv_seconds:.2f} s ({len(dataset)} images kept "
          f"of {len(baseline)} rows)")
    print(f"row-by-row csv + str.split parse alone: {baseline_seconds:.2f} s")
    print(f"speed-up of the full ingest over the row-by-row parse: "
          f"{baseline_seconds / csv_seconds:.1f}x (goal: >= 6x)")
    print(f"ingest, FER+ folder layout: {folder_seconds:.2f} s ({len(folder_dataset)} images kept "
          f"of 35,710 PNGs)")


if __name__ == "__main__":
    main()
