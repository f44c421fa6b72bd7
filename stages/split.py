"""Split stage: data/prepared -> data/split/{train,val,test}/ and data/split/report.json.

Each split is a dataset directory (images.npy, emotions_multi.npy, emotions_single.npy,
index.csv). The arrangement and the fractions come from the `split` section of params.yaml, and
the random arrangements draw from base.seed.
"""

import logging

from ferplus.dataset import load_dataset
from ferplus.params import Setting, load_section, load_seed
from ferplus.splitting import (
    ARRANGEMENTS,
    check_splits,
    split_positions,
    split_report,
    write_splits,
)
from ferplus.stage import run_stage

PREPARED_DIR = "data/prepared"
SPLIT_DIR = "data/split"

SETTINGS = {
    "arrangement": Setting(str, choices=ARRANGEMENTS),
    "val_fraction": Setting(float, minimum=0.0, exclusive_minimum=True, maximum=1.0),
    "test_fraction": Setting(float, minimum=0.0, exclusive_minimum=True, maximum=1.0),
}

logger = logging.getLogger("split")


def main() -> None:
    params = load_section("split", SETTINGS)
    seed = load_seed()

    dataset = load_dataset(PREPARED_DIR)
    logger.info("loaded %d images from %s", len(dataset), PREPARED_DIR)

    positions = split_positions(
        dataset, params["arrangement"], seed, params["val_fraction"], params["test_fraction"]
    )
    check_splits(positions, params["arrangement"])
    splits = {name: dataset.subset(split) for name, split in positions.items()}
    report = split_report(
        splits, params["arrangement"], seed, params["val_fraction"], params["test_fraction"]
    )

    for name, counts in report["splits"].items():
        logger.info(
            "%s: %d images; emotions %s; usages %s",
            name,
            counts["images"],
            counts["emotions"],
            counts["usages"],
        )
        if counts["images"] == 0:
            logger.warning("the %s split is empty", name)

    write_splits(SPLIT_DIR, splits, report)
    logger.info("wrote %s with the %r arrangement", SPLIT_DIR, params["arrangement"])


if __name__ == "__main__":
    run_stage("split", main)
