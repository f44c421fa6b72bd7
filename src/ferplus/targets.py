"""What a model learns to predict (the target), the losses, and the accuracy metric.

Targets, following the label modes of the FER+ paper (Barsoum et al. 2016):
- multi: the emotions_multi vote distribution as a soft label;
- single: emotions_single, the one-hot majority emotion;
- probability: a one-hot emotion drawn from the emotions_multi distribution, afresh for every
  batch of every epoch (the draw is seeded by base.seed, the epoch and the batch number);
- multi_target: the set of emotions with a non-zero emotions_multi value. Its loss is
  -log(sum of the predicted probabilities over that set): the cross-entropy of the event that the
  predicted emotion is one of the image's emotions. It therefore requires loss: crossentropy and
  accepts no label smoothing.

Losses for the other targets:
- crossentropy: categorical cross-entropy, soft labels allowed;
- kl_divergence: the Kullback-Leibler divergence of the prediction from the label. It differs
  from the cross-entropy by the label's entropy, a constant, so the gradients are the same;
- mse: the mean over the 8 emotions of the squared difference, the reference notebook's loss.

Every label batch carries two parts side by side, shape (N, 16): the target the loss uses, then
the one-hot majority emotion that the accuracy uses, so the accuracy always measures the same
thing (argmax of the prediction against the majority emotion) whatever the target.
"""

import keras
import tensorflow as tf

from ferplus import EMOTIONS
from ferplus.params import check_choice

TARGETS = ("multi", "single", "probability", "multi_target")
LOSSES = ("crossentropy", "kl_divergence", "mse")

EMOTION_COUNT = len(EMOTIONS)
EPSILON = 1e-7
"""Probabilities are clipped to at least this before a logarithm, as Keras' own losses do."""


def check_target_and_loss(target: str, loss: str, label_smoothing: float) -> None:
    """Raise ValueError for an unknown target or loss, or a combination without meaning."""
    check_choice("target", target, TARGETS)
    check_choice("loss", loss, LOSSES)
    if target == "multi_target" and loss != "crossentropy":
        raise ValueError(
            f"invalid loss {loss!r} for target 'multi_target': that target has its own loss, "
            "-log(sum of the predicted probabilities over the image's emotions), which is a "
            "cross-entropy; set loss to 'crossentropy'"
        )
    if target == "multi_target" and label_smoothing > 0:
        raise ValueError(
            f"invalid label_smoothing {label_smoothing} for target 'multi_target': the target is "
            "a set of emotions, which has no smoothed form; set label_smoothing to 0"
        )


def draw_one_hot(emotions_multi: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Draw one emotion per row from the distribution `emotions_multi` (N, 8); return one-hots.

    `seed` is a stateless seed of shape (2,): the same seed draws the same emotions. Emotions
    with probability 0 are never drawn.
    """
    logits = tf.math.log(tf.cast(emotions_multi, tf.float32))
    drawn = tf.random.stateless_categorical(logits, 1, seed=seed)[:, 0]
    return tf.one_hot(drawn, EMOTION_COUNT, dtype=tf.float32)


def pack_labels(targets: tf.Tensor, majority: tf.Tensor) -> tf.Tensor:
    """Put the loss's targets (N, 8) and the one-hot majority emotions (N, 8) side by side."""
    return tf.concat([tf.cast(targets, tf.float32), tf.cast(majority, tf.float32)], axis=-1)


def _unpack_labels(labels):
    return labels[..., :EMOTION_COUNT], labels[..., EMOTION_COUNT:]


def smooth_labels(targets, label_smoothing: float):
    """Mix the targets with the uniform distribution: (1 - smoothing) * target + smoothing / 8."""
    if label_smoothing == 0:
        return targets
    return targets * (1.0 - label_smoothing) + label_smoothing / EMOTION_COUNT


def label_set_loss(targets, probabilities):
    """Return -log(sum of `probabilities` over the emotions whose target is non-zero), per row."""
    in_set = keras.ops.cast(keras.ops.greater(targets, 0), probabilities.dtype)
    inside = keras.ops.sum(probabilities * in_set, axis=-1)
    return -keras.ops.log(keras.ops.clip(inside, EPSILON, 1.0))


def make_loss(target: str, loss: str, label_smoothing: float):
    """Return the Keras loss function of packed labels (N, 16) and probabilities (N, 8).

    It returns one loss value per image; Keras averages them over the (global) batch.
    """
    check_target_and_loss(target, loss, label_smoothing)
    if target == "multi_target":
        base_loss = label_set_loss
    else:
        base_loss = {
            "crossentropy": keras.losses.categorical_crossentropy,
            "kl_divergence": keras.losses.kl_divergence,
            "mse": keras.losses.mean_squared_error,
        }[loss]

    def packed_loss(labels, probabilities):
        targets, _ = _unpack_labels(labels)
        probabilities = keras.ops.cast(probabilities, "float32")
        return base_loss(smooth_labels(targets, label_smoothing), probabilities)

    packed_loss.__name__ = f"{target}_{loss}"
    return packed_loss


def majority_accuracy(labels, probabilities):
    """Return 1 per image whose most probable emotion is its majority emotion, else 0."""
    _, majority = _unpack_labels(labels)
    matches = keras.ops.equal(
        keras.ops.argmax(majority, axis=-1), keras.ops.argmax(probabilities, axis=-1)
    )
    return keras.ops.cast(matches, "float32")


def accuracy_metric() -> keras.metrics.Metric:
    """Return the mean of `majority_accuracy`, reported as 'accuracy' and 'val_accuracy'."""
    return keras.metrics.MeanMetricWrapper(majority_accuracy, name="accuracy")
