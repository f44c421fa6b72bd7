"""tf.data input pipelines: training batches with seeded order, labels and augmentation.

The training pipeline is a function of (base.seed, epoch, batch number) only: each epoch's image
order, drawn labels (target probability) and augmentation come from stateless random operations
keyed on those numbers. A run resumed at epoch k therefore sees exactly the batches that an
uninterrupted run sees from epoch k on. Images stay in memory as one uint8 tensor; every step
gathers one batch of indices, so per-image Python code never runs.
"""

import numpy as np
import tensorflow as tf

from ferplus.augmentation import Augmentation, augment_images
from ferplus.dataset import Dataset
from ferplus.targets import draw_one_hot, pack_labels

# Separate random streams, so that changing one use of randomness leaves the others unchanged.
ORDER_STREAM = 1
LABEL_STREAM = 2
AUGMENTATION_STREAM = 3


def stream_seed(seed: int, stream: int, *numbers) -> tf.Tensor:
    """Return a stateless seed (shape (2,), int64) derived from base.seed, a stream and numbers."""
    key = tf.constant([seed, stream], dtype=tf.int64)
    for number in numbers:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(number, tf.int64))
    return key


def target_source(dataset: Dataset, target: str) -> np.ndarray:
    """Return the array the target labels come from: emotions_single for target single.

    Otherwise emotions_multi. Target probability draws its training labels from it, and its
    validation label is the distribution itself, the expected value of the drawn one-hot labels.
    """
    if target == "single":
        return dataset.emotions_single
    return dataset.emotions_multi


def _distribute_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # The batches come from tensors in memory, not files, so workers split them by element.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def make_train_dataset(
    dataset: Dataset,
    target: str,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    augmentation: Augmentation,
) -> tf.data.Dataset:
    """Return the batches of epochs first_epoch to epochs - 1, one after the other.

    Each epoch yields len(dataset) // batch_size full batches of (float32 pixels (B, 48, 48, 1),
    packed labels (B, 16)). The images left over after the last full batch change from epoch to
    epoch, because the order does.
    """
    count = len(dataset)
    steps = count // batch_size
    if steps == 0:
        raise ValueError(
            f"the training set has {count} images, fewer than batch_size {batch_size}; "
            "lower train.batch_size"
        )
    images = tf.constant(dataset.images)
    sources = tf.constant(target_source(dataset, target), dtype=tf.float32)
    majority = tf.constant(dataset.emotions_single, dtype=tf.float32)

    def epoch_batches(epoch):
        scores = tf.random.stateless_uniform([count], seed=stream_seed(seed, ORDER_STREAM, epoch))
        order = tf.argsort(scores)[: steps * batch_size]
        batches = tf.data.Dataset.from_tensor_slices(tf.reshape(order, [steps, batch_size]))
        return batches.enumerate().map(lambda batch, indices: (epoch, batch, indices))

    def load_batch(epoch, batch, indices):
        pixels = tf.cast(tf.gather(images, indices), tf.float32)
        pixels = augment_images(
            pixels, augmentation, stream_seed(seed, AUGMENTATION_STREAM, epoch, batch)
        )
        targets = tf.gather(sources, indices)
        if target == "probability":
            targets = draw_one_hot(targets, stream_seed(seed, LABEL_STREAM, epoch, batch))
        return pixels, pack_labels(targets, tf.gather(majority, indices))

    batches = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    batches = batches.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _distribute_by_data(batches.prefetch(tf.data.AUTOTUNE))


def make_validation_dataset(dataset: Dataset, target: str, batch_size: int) -> tf.data.Dataset:
    """Return the validation batches in file order, unaugmented, with packed labels."""
    labels = pack_labels(
        tf.constant(target_source(dataset, target), dtype=tf.float32),
        tf.constant(dataset.emotions_single, dtype=tf.float32),
    )
    batches = tf.data.Dataset.from_tensor_slices((dataset.images, labels)).batch(batch_size)
    batches = batches.map(lambda pixels, labels: (tf.cast(pixels, tf.float32), labels))
    return _distribute_by_data(batches.cache().prefetch(tf.data.AUTOTUNE))
