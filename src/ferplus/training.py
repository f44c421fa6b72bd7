"""The train stage's library: params, optimizer, callbacks and the resumable training loop.

Training reads the training and validation sets only. After every epoch it logs one line,
appends the curves to dvclive, keeps the weights of the best epoch so far and writes a resume
checkpoint. The best epoch is the one with the highest validation accuracy against the majority
emotion (the first of equal ones). The saved model is a float32 copy of the best epoch's weights
without optimizer state.

A resumed run restores the weights, the optimizer state and the schedule position, and its input
pipeline yields the same batches as an uninterrupted run. NOTE: Keras saves no state of the
Dropout layers' random generators, so the dropout masks after a resume differ, and the resumed
run is not bit-identical to an uninterrupted one.

batch_size is the global batch size: with several replicas each computes batch_size / replicas
images per step, and the learning rate applies to the global batch unchanged (no scaling with the
number of replicas or workers).
"""

import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from dvclive import Live

from ferplus import EMOTIONS, IMAGE_SIZE
from ferplus.augmentation import Augmentation
from ferplus.custom_loop import fit_with_strategy
from ferplus.dataset import Dataset
from ferplus.devices import DISTRIBUTIONS, SWITCHES, DeviceSetup
from ferplus.input_pipeline import make_train_dataset, make_validation_dataset
from ferplus.models import MODEL_NAMES, build_model, count_parameters, save_trained_model
from ferplus.params import ParamsError, Setting, validate_section
from ferplus.resume import ResumeState, ResumeStore, training_fingerprint
from ferplus.schedules import SCHEDULES, EpochSchedule
from ferplus.targets import LOSSES, TARGETS, accuracy_metric, check_target_and_loss, make_loss

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
MONITOR = "val_accuracy"
"""The log entry that picks the best epoch (higher is better)."""

TRAIN_SETTINGS = {
    "model": Setting(str, choices=MODEL_NAMES),
    "epochs": Setting(int, minimum=1),
    "batch_size": Setting(int, minimum=1),
    "optimizer": Setting(str, choices=OPTIMIZERS),
    "learning_rate": Setting(float, minimum=0, exclusive_minimum=True),
    "momentum": Setting(float, minimum=0, maximum=0.999),
    "weight_decay": Setting(float, minimum=0),
    "schedule": Setting(str, choices=SCHEDULES),
    "warmup_epochs": Setting(int, minimum=0),
    "drop_epochs": Setting(list, item_kind=int, minimum=1),
    "drop_factor": Setting(float, minimum=0, exclusive_minimum=True, maximum=1),
    "target": Setting(str, choices=TARGETS),
    "loss": Setting(str, choices=LOSSES),
    "label_smoothing": Setting(float, minimum=0, maximum=0.5),
    "horizontal_flip": Setting(bool),
    "shift": Setting(float, minimum=0, maximum=0.5),
    "rotation": Setting(float, minimum=0, maximum=180),
    "zoom": Setting(float, minimum=0, maximum=0.5),
    "distribution": Setting(str, choices=DISTRIBUTIONS),
    "mixed_precision": Setting(str, choices=SWITCHES),
    "xla": Setting(str, choices=SWITCHES),
    "deterministic": Setting(bool),
}
"""The keys of the `train` section of params.yaml and their allowed values."""


@dataclass(frozen=True)
class TrainConfig:
    """The validated `train` section of params.yaml; see params.yaml for each key's meaning."""

    model: str
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_epochs: int
    drop_epochs: tuple[int, ...]
    drop_factor: float
    target: str
    loss: str
    label_smoothing: float
    horizontal_flip: bool
    shift: float
    rotation: float
    zoom: float
    distribution: str
    mixed_precision: str
    xla: str
    deterministic: bool

    @classmethod
    def from_params(cls, values: dict, where: str = "params.yaml") -> "TrainConfig":
        """Validate the `train` section, including combinations of keys, and return it."""
        checked = validate_section("train", values, TRAIN_SETTINGS, where)
        checked["drop_epochs"] = tuple(sorted(checked["drop_epochs"]))
        config = cls(**checked)
        config._check_combinations(where)
        return config

    def _check_combinations(self, where: str) -> None:
        try:
            check_target_and_loss(self.target, self.loss, self.label_smoothing)
        except ValueError as error:
            raise ParamsError(f"{where}: train: {error}") from None
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise ParamsError(
                f"{where}: train.weight_decay is {self.weight_decay} but optimizer 'adam' has no "
                "weight decay; use optimizer 'adamw' or set weight_decay to 0"
            )
        if self.schedule == "step":
            if not self.drop_epochs:
                raise ParamsError(f"{where}: train.drop_epochs is empty; schedule 'step' needs one")
            late = [epoch for epoch in self.drop_epochs if epoch >= self.epochs]
            if late:
                raise ParamsError(
                    f"{where}: train.drop_epochs contains {late[0]}, not below train.epochs "
                    f"{self.epochs}; the learning rate would never drop"
                )
        if self.schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ParamsError(
                f"{where}: train.warmup_epochs {self.warmup_epochs} must be below train.epochs "
                f"{self.epochs}"
            )

    @property
    def augmentation(self) -> Augmentation:
        """The training augmentation ranges."""
        return Augmentation(self.horizontal_flip, self.shift, self.rotation, self.zoom)

    def as_params(self) -> dict:
        """Return the section as plain values, in the form params.yaml stores them."""
        values = asdict(self)
        values["drop_epochs"] = list(self.drop_epochs)
        return values


def check_training_data(dataset: Dataset, name: str) -> None:
    """Raise ValueError naming the set and image when `dataset` cannot be trained on."""
    expected = (IMAGE_SIZE, IMAGE_SIZE, 1)
    if len(dataset) == 0:
        raise ValueError(f"{name}: the dataset has no images")
    if dataset.images.shape[1:] != expected or dataset.images.dtype != np.uint8:
        raise ValueError(
            f"{name}: images are {dataset.images.dtype} {dataset.images.shape}, "
            f"expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1)"
        )
    for array_name in ("emotions_multi", "emotions_single"):
        array = getattr(dataset, array_name)
        if array.shape != (len(dataset), len(EMOTIONS)):
            raise ValueError(
                f"{name}: {array_name} has shape {array.shape}, "
                f"expected ({len(dataset)}, {len(EMOTIONS)})"
            )
        invalid = ~np.isfinite(array).all(axis=1) | (array < 0).any(axis=1)
        invalid |= ~np.isclose(array.sum(axis=1), 1.0, atol=1e-3)
        if invalid.any():
            row = int(np.flatnonzero(invalid)[0])
            image = dataset.index["image_name"].iloc[row] if "image_name" in dataset.index else row
            raise ValueError(
                f"{name}: {array_name} row {row} (image {image}) is {array[row].tolist()}, "
                "expected non-negative values that sum to 1"
            )


def make_optimizer(config: TrainConfig, schedule: EpochSchedule) -> keras.optimizers.Optimizer:
    """Return the configured optimizer; weight decay skips biases and batch normalization.

    Keras applies weight_decay decoupled from the gradient (as AdamW does) in adamw and sgd:
    every step subtracts learning rate * weight_decay * weight.
    """
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=config.momentum,
            weight_decay=config.weight_decay or None,
        )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


class BestEpoch(keras.callbacks.Callback):
    """Track the epoch with the highest MONITOR value and keep a copy of its weights."""

    def __init__(self, epoch=None, value=None, weights=None):
        super().__init__()
        self.epoch = epoch
        self.value = value
        self.weights = weights
        self.improved = False

    def on_epoch_end(self, epoch, logs=None):
        value = float(logs[MONITOR])
        self.improved = self.value is None or value > self.value
        if self.improved:
            self.epoch, self.value = epoch, value
            self.weights = self.model.get_weights()


class EpochLog(keras.callbacks.Callback):
    """Log one line per epoch: losses, accuracies, learning rate and seconds."""

    def __init__(self, epochs: int, schedule: EpochSchedule, best: BestEpoch):
        super().__init__()
        self.epochs = epochs
        self.schedule = schedule
        self.best = best
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logger.info(
            "epoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f, "
            "learning rate %.3g, %.1f s%s",
            epoch + 1,
            self.epochs,
            logs["loss"],
            logs["accuracy"],
            logs["val_loss"],
            logs["val_accuracy"],
            self.schedule.at_epoch(epoch),
            time.perf_counter() - self.started,
            " (best so far)" if self.best.improved else "",
        )


class LiveLog(keras.callbacks.Callback):
    """Append each epoch's loss, accuracy and learning rate to dvclive; the step is the epoch."""

    def __init__(self, live: Live, schedule: EpochSchedule):
        super().__init__()
        self.live = live
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        self.live.step = epoch
        for split, prefix in (("train", ""), ("val", "val_")):
            for metric in ("loss", "accuracy"):
                self.live.log_metric(f"{split}/{metric}", float(logs[prefix + metric]))
        self.live.log_metric("learning_rate", self.schedule.at_epoch(epoch))
        self.live.next_step()


class ResumeCheckpoint(keras.callbacks.Callback):
    """Write a resume checkpoint after every epoch."""

    def __init__(self, store: ResumeStore, fingerprint: str, best: BestEpoch):
        super().__init__()
        self.store = store
        self.fingerprint = fingerprint
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        state = ResumeState(
            fingerprint=self.fingerprint,
            epochs_done=epoch + 1,
            best_epoch=self.best.epoch,
            best_value=self.best.value,
            best_weights_file=f"best-{self.best.epoch}.npz",
        )
        self.store.save(self.model, state, self.best.weights if self.best.improved else None)


@dataclass
class TrainingResult:
    """The outcome of `train_model`."""

    model: keras.Model  # float32, uncompiled, with the best epoch's weights
    best_epoch: int  # counted from 0
    best_value: float  # the validation accuracy of the best epoch
    first_epoch: int  # the epoch this run started at: above 0 after a resume


@dataclass
class OutputPaths:
    """The paths a training process writes to: the real ones on the chief, temporary ones on
    other workers."""

    model: Path
    resume: Path
    live: Path


def _compile_model(
    config: TrainConfig, devices: DeviceSetup, schedule: EpochSchedule, loss_function
) -> keras.Model:
    with devices.strategy.scope():
        model = build_model(config.model)
        model.compile(
            optimizer=make_optimizer(config, schedule),
            loss=loss_function,
            metrics=[accuracy_metric()],
            jit_compile=devices.xla,
        )
        # The optimizer variables must exist before a checkpoint can restore them.
        model.optimizer.build(model.trainable_variables)
    return model


def _float32_copy(name: str, weights: list) -> keras.Model:
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_model(name)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    model.set_weights(weights)
    return model


def _run_epochs(
    model: keras.Model,
    loss_function,
    devices: DeviceSetup,
    train_batches,
    validation_batches,
    config: TrainConfig,
    first_epoch: int,
    steps_per_epoch: int,
    callbacks: list[keras.callbacks.Callback],
) -> None:
    """Run epochs first_epoch to config.epochs - 1 with Model.fit, or on several workers with the
    Strategy.run loop of ferplus.custom_loop."""
    verbose = devices.is_chief and sys.stdout.isatty()
    if devices.multi_worker:
        fit_with_strategy(
            model,
            loss_function,
            devices.strategy,
            train_batches,
            validation_batches,
            epochs=config.epochs,
            first_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch,
            global_batch_size=config.batch_size,
            callbacks=callbacks,
            verbose=verbose,
        )
    else:
        model.fit(
            train_batches,
            epochs=config.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_batches,
            callbacks=callbacks,
            verbose=1 if verbose else 0,
            shuffle=False,
        )


def train_model(
    config: TrainConfig,
    seed: int,
    train: Dataset,
    validation: Dataset,
    devices: DeviceSetup,
    outputs: OutputPaths,
) -> TrainingResult:
    """Train, resuming from a matching checkpoint, and save the best epoch's model.

    On the chief the model goes to outputs.model (atomically), the curves to outputs.live and the
    checkpoints to outputs.resume, which is deleted after the model is saved. A non-chief worker
    reads the chief's checkpoint but writes everything to a temporary folder that it deletes.
    """
    check_training_data(train, "training set")
    check_training_data(validation, "validation set")
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set has {len(train)} images, fewer than train.batch_size "
            f"{config.batch_size}; lower train.batch_size"
        )
    logger.info("devices: %s", devices.describe())

    with tempfile.TemporaryDirectory(prefix="ferplus-worker-") as scratch_name:
        writes = outputs
        if not devices.is_chief:
            scratch = Path(scratch_name)
            writes = OutputPaths(scratch / "model.keras", scratch / "resume", scratch / "dvclive")
        return _train(config, seed, train, validation, devices, steps_per_epoch, outputs, writes)


def _train(
    config: TrainConfig,
    seed: int,
    train: Dataset,
    validation: Dataset,
    devices: DeviceSetup,
    steps_per_epoch: int,
    outputs: OutputPaths,
    writes: OutputPaths,
) -> TrainingResult:
    fingerprint = training_fingerprint(config.as_params(), seed, train, validation)
    store = ResumeStore(writes.resume, source=outputs.resume)
    state = store.load_state(fingerprint)

    schedule = EpochSchedule(
        config.schedule,
        config.learning_rate,
        steps_per_epoch,
        config.epochs,
        warmup_epochs=config.warmup_epochs,
        drop_epochs=config.drop_epochs,
        drop_factor=config.drop_factor,
    )
    loss_function = make_loss(config.target, config.loss, config.label_smoothing)
    model = _compile_model(config, devices, schedule, loss_function)
    logger.info(
        "model %s: %d parameters, %d steps of %d images per epoch",
        config.model,
        count_parameters(model),
        steps_per_epoch,
        config.batch_size,
    )
    best = BestEpoch()
    first_epoch = 0
    if state is not None:
        with devices.strategy.scope():
            best_weights = store.restore(model, state)
        best = BestEpoch(state.best_epoch, state.best_value, best_weights)
        first_epoch = state.epochs_done
        logger.info("resuming after epoch %d of %d", first_epoch, config.epochs)

    train_batches = make_train_dataset(
        train,
        config.target,
        config.batch_size,
        seed,
        first_epoch,
        config.epochs,
        config.augmentation,
    )
    validation_batches = make_validation_dataset(validation, config.target, config.batch_size)
    live = Live(dir=str(writes.live), resume=state is not None, save_dvc_exp=False, dvcyaml=None)
    callbacks = [
        best,
        EpochLog(config.epochs, schedule, best),
        LiveLog(live, schedule),
        ResumeCheckpoint(store, fingerprint, best),
    ]
    if first_epoch < config.epochs:
        _run_epochs(
            model,
            loss_function,
            devices,
            train_batches,
            validation_batches,
            config,
            first_epoch,
            steps_per_epoch,
            callbacks,
        )

    live.summary["best"] = {"step": best.epoch, "val_accuracy": best.value}
    live.end()
    model = _float32_copy(config.model, best.weights)
    save_trained_model(model, writes.model)
    store.clear()
    logger.info(
        "best epoch %d of %d: val_accuracy %.4f; saved %s",
        best.epoch + 1,
        config.epochs,
        best.value,
        writes.model,
    )
    return TrainingResult(model, best.epoch, best.value, first_epoch)
