"""Train stage: data/split/train + data/split/val -> models/model.keras and dvclive/ curves.

The settings come from the `train` section of params.yaml and base.seed; the test split is never
read. After an interruption, rerunning resumes after the last finished epoch from the checkpoint
in models/.resume/, which is deleted once models/model.keras is written.
"""

import logging
from pathlib import Path

from ferplus.dataset import load_dataset
from ferplus.devices import configure_devices
from ferplus.params import load_section, load_seed
from ferplus.stage import run_stage
from ferplus.training import TRAIN_SETTINGS, OutputPaths, TrainConfig, train_model

TRAIN_DIR = "data/split/train"
VALIDATION_DIR = "data/split/val"
OUTPUTS = OutputPaths(
    model=Path("models/model.keras"), resume=Path("models/.resume"), live=Path("dvclive")
)

logger = logging.getLogger("train")


def main() -> None:
    config = TrainConfig.from_params(load_section("train", TRAIN_SETTINGS))
    seed = load_seed()
    # Devices first: GPU memory growth and a multi-worker strategy need a fresh TensorFlow.
    devices = configure_devices(
        config.distribution, config.mixed_precision, config.xla, config.deterministic, seed
    )

    train = load_dataset(TRAIN_DIR)
    validation = load_dataset(VALIDATION_DIR)
    logger.info("training set %s: images %s", TRAIN_DIR, train.images.shape)
    logger.info("validation set %s: images %s", VALIDATION_DIR, validation.images.shape)

    result = train_model(config, seed, train, validation, devices, OUTPUTS)
    logger.info(
        "%s: best epoch %d, val_accuracy %.4f",
        OUTPUTS.model,
        result.best_epoch + 1,
        result.best_value,
    )


if __name__ == "__main__":
    run_stage("train", main)
