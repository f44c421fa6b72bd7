"""Time `dvc repro` when nothing has changed, on a temporary copy of this repository's pipeline.

What it measures: the wall-clock time of `dvc repro` (process start included) after a first
repro, in a git + DVC repository with this project's dvc.yaml, params.yaml, stages/ and src/,
built by tests/dvc_helpers.make_project with its one-epoch params profile. Goal: about 3 s or
less on a 2-core machine.

The raw folder contains 60 labelled images plus --filler-images images whose 10 votes are all
"not a face", which ingest drops. With the default 35,650 filler images, data/raw has as many PNG
files as the real FER+ folders (35,710), so DVC walks as many raw files as on the real data,
while training still sees 36 images. The prepared and split arrays stay small. DVC's state
database (dvc_data/hashfile/state.py) skips rehashing a file whose inode, modification time and
size are unchanged, so larger arrays should not slow a no-op repro much (an estimate, not
measured here).

Usage: python benchmarks/noop_repro.py [--repeats 5] [--filler-images 35650] [--work DIR]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "tests"))

from dvc_helpers import (  # noqa: E402
    COMMAND_TIMEOUT,
    DVC,
    UP_TO_DATE,
    Project,
    make_project,
    raw_rows,
)

from ferplus import USAGES, VOTE_COLUMNS  # noqa: E402

NOT_A_FACE_VOTES = [0] * (len(VOTE_COLUMNS) - 1) + [10]  # the last vote column is NF


def filler_rows(count: int, first_number: int) -> list[tuple[str, str, list[int]]]:
    """Return `count` raw rows that ingest drops because every vote is "not a face"."""
    return [
        (USAGES[number % len(USAGES)], f"fer{first_number + number:07d}.png", NOT_A_FACE_VOTES)
        for number in range(count)
    ]


def timed_repro(project: Project) -> tuple[float, str]:
    """Run `dvc repro` and return its wall-clock seconds and output."""
    started = time.perf_counter()
    result = project.dvc("repro", timeout=COMMAND_TIMEOUT)
    return time.perf_counter() - started, result.stdout


def describe_machine() -> str:
    dvc_version = subprocess.run(
        [DVC, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"DVC {dvc_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="no-op repros to time")
    parser.add_argument(
        "--filler-images",
        type=int,
        default=35_650,
        help="raw images that ingest drops, added to the 60 labelled ones (default: FER+ count)",
    )
    parser.add_argument(
        "--work", type=Path, help="new folder for the repository, kept (default: a temporary one)"
    )
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ferplus-noop-") as temporary:
        work = arguments.work or Path(temporary)
        labelled = raw_rows()
        rows = labelled + filler_rows(arguments.filler_images, len(labelled))
        project = make_project(work / "project", work / "site-cache", rows)
        stages = project.stages()
        raw_files = sum(1 for file in (project.path / "data" / "raw").rglob("*.png"))

        first_seconds, _ = timed_repro(project)
        project.commit("Run the pipeline")
        seconds = []
        for _ in range(arguments.repeats):
            elapsed, output = timed_repro(project)
            if UP_TO_DATE not in output:
                raise SystemExit(f"dvc repro did some work on repeat {len(seconds) + 1}:\n{output}")
            seconds.append(elapsed)

    print(f"machine: {describe_machine()}")
    print(f"pipeline stages: {', '.join(stages)}; raw PNG files: {raw_files}")
    print(f"first dvc repro (runs every stage): {first_seconds:.1f} s")
    print(
        f"no-op dvc repro, {len(seconds)} runs: min {min(seconds):.2f} s, "
        f"median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s"
    )


if __name__ == "__main__":
    main()
