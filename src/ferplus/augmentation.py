"""Random image augmentation for training: flip, shift, rotation and zoom in one affine warp.

The four transformations are combined into a single affine matrix per image and applied to a
whole batch by one `keras.ops.image.affine_transform` call inside the tf.data pipeline. The random
draws are stateless (a function of the seed passed in), so a batch's augmentation depends only on
base.seed, the epoch and the batch number. Runs are therefore reproducible, parallel map calls
cannot race for a random state, and a resumed run augments exactly as an uninterrupted one.
"""

import math
from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    """The ranges of the random transformations; zero everywhere and no flip is no augmentation."""

    horizontal_flip: bool  # mirror left-right with probability 1/2
    shift: float  # largest shift, as a fraction of the image width (and height)
    rotation: float  # largest rotation either way, in degrees
    zoom: float  # largest scale change either way, as a fraction: 0.05 scales by 0.95 to 1.05

    @property
    def is_identity(self) -> bool:
        """Whether every image passes unchanged."""
        return not self.horizontal_flip and self.shift == self.rotation == self.zoom == 0


def affine_matrices(
    augmentation: Augmentation, batch_size: tf.Tensor, height: int, width: int, seed: tf.Tensor
) -> tf.Tensor:
    """Draw one random transformation per image as (batch_size, 8) projective transform rows.

    Each row maps an output pixel (x, y) to the input pixel it samples,
    input = center + zoom * rotation * flip * (output - center) + shift, in the layout of
    `keras.ops.image.affine_transform`: [a0, a1, a2, b0, b1, b2, 0, 0].
    """
    uniform = tf.random.stateless_uniform([batch_size, 5], seed=seed, minval=-1.0, maxval=1.0)
    if augmentation.horizontal_flip:
        flip = tf.where(uniform[:, 0] < 0, -1.0, 1.0)
    else:
        flip = tf.ones([batch_size])
    angle = uniform[:, 1] * math.radians(augmentation.rotation)
    shift_x = uniform[:, 2] * augmentation.shift * width
    shift_y = uniform[:, 3] * augmentation.shift * height
    scale = 1.0 + uniform[:, 4] * augmentation.zoom

    cosine = tf.cos(angle) * scale
    sine = tf.sin(angle) * scale
    # The 2x2 part: scale * [[cos, -sin], [sin, cos]] @ [[flip, 0], [0, 1]].
    a0 = cosine * flip
    a1 = -sine
    b0 = sine * flip
    b1 = cosine
    center_x = (width - 1) / 2
    center_y = (height - 1) / 2
    a2 = center_x + shift_x - a0 * center_x - a1 * center_y
    b2 = center_y + shift_y - b0 * center_x - b1 * center_y
    zeros = tf.zeros([batch_size])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_images(images: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Transform a float batch (N, H, W, C) at random; `seed` is a stateless seed of shape (2,).

    Pixels sampled from outside the image repeat the nearest edge pixel, and values between
    pixels are interpolated bilinearly.
    """
    if augmentation.is_identity:
        return images
    shape = tf.shape(images)
    transforms = affine_matrices(
        augmentation, shape[0], int(images.shape[1]), int(images.shape[2]), seed
    )
    return keras.ops.image.affine_transform(
        images, transforms, interpolation="bilinear", fill_mode="nearest"
    )
