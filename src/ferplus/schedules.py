"""Learning-rate schedules defined in epochs and evaluated at every optimizer step.

The schedule reads the optimizer's step counter, which is saved with the optimizer state, so a
resumed run continues the schedule where it stopped.
"""

import math
from collections.abc import Sequence

import keras

SCHEDULES = ("constant", "step", "cosine")


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """One of three learning-rate schedules, expressed in epochs.

    - constant: `learning_rate` throughout.
    - step: `learning_rate` multiplied by `drop_factor` once for each epoch of `drop_epochs`
      (counted from 0) already begun; e.g. drop_epochs [15] and drop_factor 0.5 over 30 epochs is
      the reference notebook's 2e-4 then 1e-4.
    - cosine: a linear warmup over `warmup_epochs` from learning_rate / warmup steps up to
      `learning_rate`, then a half cosine down to 0 at the end of the last epoch.
    """

    def __init__(
        self,
        kind: str,
        learning_rate: float,
        steps_per_epoch: int,
        epochs: int,
        warmup_epochs: int = 0,
        drop_epochs: Sequence[int] = (),
        drop_factor: float = 1.0,
    ):
        if kind not in SCHEDULES:
            raise ValueError(f"invalid schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(
                f"invalid schedule length: steps_per_epoch {steps_per_epoch} and epochs "
                f"{epochs} must both be at least 1"
            )
        self.kind = kind
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.drop_epochs = tuple(int(epoch) for epoch in drop_epochs)
        self.drop_factor = float(drop_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.kind == "constant":
            return keras.ops.full((), self.learning_rate, dtype="float32")

        if self.kind == "step":
            epoch = keras.ops.floor(step / self.steps_per_epoch)
            drops = keras.ops.zeros((), dtype="float32")
            for drop_epoch in self.drop_epochs:
                drops = drops + keras.ops.cast(
                    keras.ops.greater_equal(epoch, drop_epoch), "float32"
                )
            return self.learning_rate * keras.ops.power(self.drop_factor, drops)

        warmup_steps = float(self.warmup_epochs * self.steps_per_epoch)
        total_steps = float(self.epochs * self.steps_per_epoch)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1.0)
        progress = keras.ops.clip(progress, 0.0, 1.0)
        cosine = self.learning_rate * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        if warmup_steps == 0:
            return cosine
        warmup = self.learning_rate * (step + 1.0) / warmup_steps
        return keras.ops.where(step < warmup_steps, warmup, cosine)

    def at_epoch(self, epoch: int) -> float:
        """Return the learning rate of the first step of `epoch` (counted from 0)."""
        return float(self(epoch * self.steps_per_epoch))

    def get_config(self) -> dict:
        return {
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "drop_epochs": list(self.drop_epochs),
            "drop_factor": self.drop_factor,
        }
