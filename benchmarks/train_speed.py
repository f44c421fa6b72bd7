"""Time training on this machine: every registered model, and the input pipeline's cost.

Prints, in one run:
- training throughput (images/s) of every model in the registry, fed by the real augmenting
  input pipeline at the batch size of params.yaml, and the seconds one epoch over the training
  split would take at that rate;
- the default model's speed-up per epoch over the reference notebook's VGG16 (goal: >= 4x);
- the input pipeline's overhead: the default model fed by the augmenting tf.data pipeline
  against the same model fed one batch of tensors already in memory, repeated (goal: <= 10%).

Images come from data/split/train when it exists, otherwise random pixels of the same shape
(speed does not depend on the pixel values). Each rate is the best of --repeats timed runs of
--steps steps after a warm-up, with the two feeds of the overhead figure alternated, so that
load from other processes hits both alike.

Usage: python benchmarks/train_speed.py [--steps 30] [--large-steps 16] [--repeats 3]
                                       [--models compact_cnn vgg13 ...]
"""

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ferplus.augmentation import Augmentation  # noqa: E402
from ferplus.dataset import Dataset, load_dataset  # noqa: E402
from ferplus.input_pipeline import make_train_dataset  # noqa: E402
from ferplus.models import MODEL_NAMES, build_model, count_parameters  # noqa: E402
from ferplus.params import load_section  # noqa: E402
from ferplus.targets import accuracy_metric, make_loss, pack_labels  # noqa: E402
from ferplus.training import TRAIN_SETTINGS  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "compact_cnn"
NOTEBOOK_MODEL = "vgg16_combined"


def training_images(batch_size: int, steps: int) -> tuple[Dataset, str]:
    """Return at least one epoch of `steps` batches: the real train split, or random pixels."""
    split = REPOSITORY / "data" / "split" / "train"
    if (split / "images.npy").is_file():
        return load_dataset(split), f"{split} (real FER+ images)"
    count = batch_size * (steps + 2)
    random = np.random.default_rng(0)
    votes = random.dirichlet(np.ones(8), size=count).astype(np.float32)
    one_hot = np.eye(8, dtype=np.float32)[votes.argmax(axis=1)]
    images = random.integers(0, 256, (count, 48, 48, 1), dtype=np.uint8)
    return Dataset(images, votes, one_hot, index=None), "random pixels (no data/split/train)"


def compiled_model(name: str, params: dict) -> keras.Model:
    model = build_model(name)
    model.compile(
        optimizer=keras.optimizers.AdamW(params["learning_rate"], weight_decay=0.01),
        loss=make_loss(params["target"], params["loss"], params["label_smoothing"]),
        metrics=[accuracy_metric()],
    )
    return model


def images_per_second(model: keras.Model, batches, steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, small models")
    parser.add_argument(
        "--large-steps", type=int, default=16, help="timed steps per run for the VGG models"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument(
        "--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES,
        help="models to time (default: all)",
    )
    arguments = parser.parse_args()

    params = load_section("train", TRAIN_SETTINGS, REPOSITORY / "params.yaml")
    batch_size = params["batch_size"]
    augmentation = Augmentation(
        params["horizontal_flip"], params["shift"], params["rotation"], params["zoom"]
    )
    train, source = training_images(batch_size, max(arguments.steps, arguments.large_steps))
    gpus = tf.config.list_physical_devices("GPU")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {len(gpus)} GPUs, "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    print(f"images: {source}, {len(train)} per epoch, batch size {batch_size}")

    def pipeline():
        return make_train_dataset(
            train, params["target"], batch_size, seed=0, first_epoch=0, epochs=10_000,
            augmentation=augmentation,
        )

    epoch_seconds = {}
    for name in arguments.models:
        steps = arguments.steps if name == DEFAULT_MODEL else arguments.large_steps
        model = compiled_model(name, params)
        batches = pipeline()
        model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0)  # builds and traces the step
        rate = max(
            images_per_second(model, batches, steps, batch_size) for _ in range(arguments.repeats)
        )
        epoch_seconds[name] = len(train) / rate
        print(f"{name:15s} {count_parameters(model):>11,d} parameters  {rate:7.1f} images/s  "
              f"{epoch_seconds[name]:7.0f} s per epoch")
        del model
        keras.backend.clear_session()

    if DEFAULT_MODEL in epoch_seconds and NOTEBOOK_MODEL in epoch_seconds:
        speed_up = epoch_seconds[NOTEBOOK_MODEL] / epoch_seconds[DEFAULT_MODEL]
        print(f"{DEFAULT_MODEL} speed-up per epoch over {NOTEBOOK_MODEL}: {speed_up:.1f}x "
              "(goal: >= 4x)")

    # Input pipeline overhead: the same model, fed from memory or through the pipeline.
    model = compiled_model(DEFAULT_MODEL, params)
    # The purest in-memory feed: one batch of tensors, repeated, with no per-step input work.
    # The model's compute does not depend on the pixel values.
    labels = pack_labels(train.emotions_multi[:batch_size], train.emotions_single[:batch_size])
    images = tf.cast(train.images[:batch_size], tf.float32)
    in_memory = tf.data.Dataset.from_tensors((images, labels)).repeat()
    augmented = pipeline()
    for batches in (in_memory, augmented):
        model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)
    rates = {"memory": [], "pipeline": []}
    for _ in range(arguments.repeats + 1):
        rates["memory"].append(images_per_second(model, in_memory, arguments.steps, batch_size))
        rates["pipeline"].append(images_per_second(model, augmented, arguments.steps, batch_size))
    memory_rate, pipeline_rate = max(rates["memory"]), max(rates["pipeline"])
    print(f"{DEFAULT_MODEL} fed from memory: {memory_rate:.1f} images/s; through the augmenting "
          f"pipeline: {pipeline_rate:.1f} images/s; pipeline overhead "
          f"{(1 - pipeline_rate / memory_rate) * 100:.1f}% (goal: <= 10%)")


if __name__ == "__main__":
    main()
