"""Tests of targets, losses, schedules, augmentation, the input pipeline, params, resume and the
train stage, on tiny hand-made data."""

import json
import logging
import math
import runpy
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from ruamel.yaml import YAML

from ferplus import EMOTIONS, VOTE_COLUMNS
from ferplus.augmentation import Augmentation, affine_matrices, augment_images
from ferplus.dataset import Dataset, save_dataset
from ferplus.devices import DeviceSetup, is_chief_task, resolve_switch
from ferplus.input_pipeline import make_train_dataset, make_validation_dataset
from ferplus.models import load_trained_model
from ferplus.params import ParamsError, read_params_file
from ferplus.resume import ResumeState, ResumeStore, training_fingerprint
from ferplus.schedules import EpochSchedule
from ferplus.targets import (
    check_target_and_loss,
    draw_one_hot,
    majority_accuracy,
    make_loss,
    pack_labels,
)
from ferplus.training import (
    OutputPaths,
    ResumeCheckpoint,
    TrainConfig,
    check_training_data,
    make_optimizer,
    train_model,
)

REPOSITORY = Path(__file__).resolve().parents[1]

NO_AUGMENTATION = Augmentation(horizontal_flip=False, shift=0.0, rotation=0.0, zoom=0.0)
FULL_AUGMENTATION = Augmentation(horizontal_flip=True, shift=0.08, rotation=20.0, zoom=0.05)

SMALL_PARAMS = {
    "model": "compact_cnn",
    "epochs": 1,
    "batch_size": 16,
    "optimizer": "adam",
    "learning_rate": 0.003,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup_epochs": 0,
    "drop_epochs": [1],
    "drop_factor": 0.5,
    "target": "multi",
    "loss": "crossentropy",
    "label_smoothing": 0.0,
    "horizontal_flip": True,
    "shift": 0.08,
    "rotation": 20.0,
    "zoom": 0.05,
    "distribution": "auto",
    "mixed_precision": "off",
    "xla": "off",
    "deterministic": False,
}


def make_dataset(count: int, seed: int = 0, pixel_is_position: bool = False) -> Dataset:
    """Build `count` images whose majority emotion shows as a bright block at its own place.

    Each image has 7 votes for its emotion and 3 for the next one. With pixel_is_position, every
    pixel of image i is i instead (count <= 256), so a batch reveals which images it holds.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(EMOTIONS), count)
    if pixel_is_position:
        images = np.broadcast_to(
            np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 48, 48, 1)
        ).copy()
    else:
        images = rng.integers(0, 60, (count, 48, 48, 1)).astype(np.uint8)
        for position, label in enumerate(labels):
            row, column = (label // 4) * 24, (label % 4) * 12
            images[position, row : row + 24, column : column + 12] += 150
    votes = np.zeros((count, len(VOTE_COLUMNS)), dtype=np.int64)
    votes[np.arange(count), labels] = 7
    votes[np.arange(count), (labels + 1) % len(EMOTIONS)] = 3
    index = pd.DataFrame(
        {
            "source": "hand-made",
            "image_name": [f"image{position:03d}.png" for position in range(count)],
            "usage": "Training",
        }
    )
    for column, name in enumerate(VOTE_COLUMNS):
        index[name] = votes[:, column]
    return Dataset(
        images=images,
        emotions_multi=(votes[:, : len(EMOTIONS)] / 10).astype(np.float32),
        emotions_single=np.eye(len(EMOTIONS), dtype=np.float32)[labels],
        index=index,
    )


def one_device() -> DeviceSetup:
    return DeviceSetup(
        strategy=tf.distribute.get_strategy(),
        is_chief=True,
        mixed_precision_policy="float32",
        xla=False,
        multi_worker=False,
    )


def config_with(**changes) -> TrainConfig:
    return TrainConfig.from_params(SMALL_PARAMS | changes)


def output_paths(root: Path) -> OutputPaths:
    return OutputPaths(
        root / "models" / "model.keras", root / "models" / ".resume", root / "dvclive"
    )


def packed(targets, majority=None) -> np.ndarray:
    targets = np.asarray(targets, dtype=np.float32)
    if majority is None:
        majority = np.eye(8, dtype=np.float32)[targets.argmax(axis=1)]
    return pack_labels(targets, majority).numpy()


def loss_value(target, loss, targets, probabilities, label_smoothing=0.0) -> np.ndarray:
    function = make_loss(target, loss, label_smoothing)
    return keras.ops.convert_to_numpy(
        function(packed(targets), np.asarray(probabilities, dtype=np.float32))
    )


# Targets and losses.

SOFT = [[0.5, 0.5, 0, 0, 0, 0, 0, 0]]
PREDICTED = [[0.25, 0.25, 0.5, 0, 0, 0, 0, 0]]


def test_crossentropy_soft_labels():
    # -(0.5 ln 0.25 + 0.5 ln 0.25) = ln 4
    assert loss_value("multi", "crossentropy", SOFT, PREDICTED) == pytest.approx([math.log(4)])


def test_kl_divergence_soft_labels():
    # 0.5 ln(0.5 / 0.25) twice = ln 2; Keras clips zero targets to 1e-7, a 1e-6 change.
    result = loss_value("multi", "kl_divergence", SOFT, PREDICTED)

    assert result == pytest.approx([math.log(2)], abs=1e-5)


def test_mse_loss():
    # (0.5^2 + 0.5^2) / 8 emotions
    result = loss_value("single", "mse", [[1, 0, 0, 0, 0, 0, 0, 0]], [[0.5, 0.5, 0, 0, 0, 0, 0, 0]])

    assert result == pytest.approx([0.0625])


def test_multi_target_loss():
    probabilities = [[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0]]

    result = loss_value(
        "multi_target", "crossentropy", [[0.6, 0.4, 0, 0, 0, 0, 0, 0]], probabilities
    )

    assert result == pytest.approx([-math.log(0.7)])


def test_multi_target_loss_ignores_weights():
    probabilities = [[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0]]

    even = loss_value("multi_target", "crossentropy", [[0.5, 0.5, 0, 0, 0, 0, 0, 0]], probabilities)
    uneven = loss_value(
        "multi_target", "crossentropy", [[0.9, 0.1, 0, 0, 0, 0, 0, 0]], probabilities
    )

    assert even == pytest.approx(uneven)


def test_multi_target_loss_clips_zero_probability():
    result = loss_value(
        "multi_target", "crossentropy", [[0, 0, 0, 0, 0, 0, 0, 1]], [[1, 0, 0, 0, 0, 0, 0, 0]]
    )

    assert result == pytest.approx([-math.log(1e-7)])


def test_label_smoothing_crossentropy():
    # One-hot smoothed by 0.2: 0.8 + 0.025 = 0.825 on neutral and 0.025 on the others.
    probabilities = [[0.5] + [0.5 / 7] * 7]

    result = loss_value("single", "crossentropy", [[1, 0, 0, 0, 0, 0, 0, 0]], probabilities, 0.2)

    expected = -(0.825 * math.log(0.5) + 0.175 * math.log(0.5 / 7))
    assert result == pytest.approx([expected])


def test_majority_accuracy_values():
    labels = packed([[0.4, 0.6, 0, 0, 0, 0, 0, 0]] * 2, majority=np.eye(8)[[1, 1]])
    probabilities = np.array([[0.1, 0.9, 0, 0, 0, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0, 0, 0]])

    result = keras.ops.convert_to_numpy(majority_accuracy(labels, probabilities))

    assert result.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("loss", ["mse", "kl_divergence"])
def test_multi_target_rejects_other_losses(loss):
    with pytest.raises(ValueError, match="set loss to 'crossentropy'"):
        check_target_and_loss("multi_target", loss, 0.0)


def test_multi_target_rejects_label_smoothing():
    with pytest.raises(ValueError, match="set label_smoothing to 0"):
        check_target_and_loss("multi_target", "crossentropy", 0.1)


def test_unknown_target_lists_choices():
    with pytest.raises(ValueError, match="invalid target 'soft'.*'multi', 'single'"):
        check_target_and_loss("soft", "crossentropy", 0.0)


def test_draw_one_hot_frequencies():
    distribution = np.tile([[0.5, 0.3, 0.2, 0, 0, 0, 0, 0]], (20_000, 1)).astype(np.float32)

    drawn = draw_one_hot(distribution, tf.constant([7, 11], tf.int64)).numpy()
    frequencies = drawn.mean(axis=0)

    assert drawn.sum(axis=1).tolist() == [1.0] * 20_000
    assert frequencies[0] == pytest.approx(0.5, abs=0.015)
    assert frequencies[1] == pytest.approx(0.3, abs=0.015)
    assert frequencies[2] == pytest.approx(0.2, abs=0.015)
    assert frequencies[3:].sum() == 0


def test_draw_one_hot_seeded():
    distribution = np.tile([[0.25] * 4 + [0] * 4], (200, 1)).astype(np.float32)

    first = draw_one_hot(distribution, tf.constant([1, 2], tf.int64)).numpy()
    again = draw_one_hot(distribution, tf.constant([1, 2], tf.int64)).numpy()
    other = draw_one_hot(distribution, tf.constant([1, 3], tf.int64)).numpy()

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# Learning-rate schedules.


def test_constant_schedule():
    schedule = EpochSchedule("constant", 0.01, steps_per_epoch=10, epochs=5)

    assert [schedule.at_epoch(epoch) for epoch in (0, 4)] == pytest.approx([0.01, 0.01])


def test_step_schedule_epochs():
    schedule = EpochSchedule(
        "step", 2e-4, steps_per_epoch=10, epochs=6, drop_epochs=(2, 4), drop_factor=0.5
    )

    rates = [schedule.at_epoch(epoch) for epoch in range(6)]

    assert rates == pytest.approx([2e-4, 2e-4, 1e-4, 1e-4, 5e-5, 5e-5])


def test_step_schedule_last_step_before_drop():
    schedule = EpochSchedule(
        "step", 2e-4, steps_per_epoch=10, epochs=6, drop_epochs=(2,), drop_factor=0.5
    )

    assert float(schedule(19)) == pytest.approx(2e-4)
    assert float(schedule(20)) == pytest.approx(1e-4)


def test_cosine_schedule_with_warmup():
    schedule = EpochSchedule("cosine", 1.0, steps_per_epoch=10, epochs=10, warmup_epochs=2)

    # Warmup: (step + 1) / 20 steps; then half a cosine over the remaining 80 steps.
    assert schedule.at_epoch(0) == pytest.approx(0.05)
    assert schedule.at_epoch(1) == pytest.approx(0.55)
    assert schedule.at_epoch(2) == pytest.approx(1.0)
    assert schedule.at_epoch(6) == pytest.approx(0.5)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_cosine_schedule_without_warmup():
    schedule = EpochSchedule("cosine", 1.0, steps_per_epoch=4, epochs=2)

    assert schedule.at_epoch(0) == pytest.approx(1.0)
    assert schedule.at_epoch(1) == pytest.approx(0.5)


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="invalid schedule 'linear'"):
        EpochSchedule("linear", 1.0, steps_per_epoch=4, epochs=2)


# Augmentation.


def test_augmentation_identity():
    images = tf.random.uniform([4, 48, 48, 1], maxval=255.0)

    result = augment_images(images, NO_AUGMENTATION, tf.constant([1, 2], tf.int64))

    assert np.array_equal(result.numpy(), images.numpy())


def test_augmentation_flip_only():
    images = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 1)).astype(np.float32)
    flip_only = Augmentation(horizontal_flip=True, shift=0.0, rotation=0.0, zoom=0.0)

    result = augment_images(tf.constant(images), flip_only, tf.constant([1, 2], tf.int64)).numpy()

    unchanged = [
        np.array_equal(after, before) for after, before in zip(result, images, strict=True)
    ]
    mirrored = [
        np.array_equal(after, before[:, ::-1]) for after, before in zip(result, images, strict=True)
    ]
    assert all(same or flipped for same, flipped in zip(unchanged, mirrored, strict=True))
    assert 10 < sum(mirrored) < 54


def test_augmentation_matrix_ranges():
    matrices = affine_matrices(
        FULL_AUGMENTATION, 1000, 48, 48, tf.constant([3, 4], tf.int64)
    ).numpy()
    a0, a1, a2, b0, b1, b2 = matrices[:, :6].T
    scale = np.sqrt(np.abs(a0 * b1 - a1 * b0))
    angle = np.degrees(np.arctan2(-a1, b1))
    # The image center 23.5 maps to center + shift.
    shift_x = a0 * 23.5 + a1 * 23.5 + a2 - 23.5
    shift_y = b0 * 23.5 + b1 * 23.5 + b2 - 23.5

    assert scale.min() >= 0.95 - 1e-6
    assert scale.max() <= 1.05 + 1e-6
    assert np.abs(angle).max() <= 20 + 1e-4
    assert np.abs(angle).max() > 15
    assert np.abs(shift_x).max() <= 0.08 * 48 + 1e-4
    assert np.abs(shift_y).max() <= 0.08 * 48 + 1e-4
    assert np.all(matrices[:, 6:] == 0)


def test_augmentation_seeded():
    images = tf.random.uniform([8, 48, 48, 1], maxval=255.0, seed=1)

    first = augment_images(images, FULL_AUGMENTATION, tf.constant([5, 6], tf.int64)).numpy()
    again = augment_images(images, FULL_AUGMENTATION, tf.constant([5, 6], tf.int64)).numpy()
    other = augment_images(images, FULL_AUGMENTATION, tf.constant([5, 7], tf.int64)).numpy()

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


# Input pipeline.


def batches_of(dataset: tf.data.Dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(pixels.numpy(), labels.numpy()) for pixels, labels in dataset.take(count)]


def positions_in(pixels: np.ndarray) -> list[int]:
    return pixels[:, 0, 0, 0].astype(int).tolist()


def test_train_batches_shapes():
    dataset = make_dataset(50)

    batches = batches_of(make_train_dataset(dataset, "multi", 16, 1, 0, 2, FULL_AUGMENTATION), 10)

    assert len(batches) == 6
    assert batches[0][0].shape == (16, 48, 48, 1)
    assert batches[0][0].dtype == np.float32
    assert batches[0][1].shape == (16, 16)


def test_train_epoch_has_distinct_images():
    dataset = make_dataset(48, pixel_is_position=True)

    batches = batches_of(make_train_dataset(dataset, "multi", 16, 1, 0, 2, NO_AUGMENTATION), 6)
    first_epoch = sum((positions_in(pixels) for pixels, _ in batches[:3]), [])
    second_epoch = sum((positions_in(pixels) for pixels, _ in batches[3:]), [])

    assert sorted(first_epoch) == list(range(48))
    assert sorted(second_epoch) == list(range(48))
    assert first_epoch != second_epoch


@pytest.mark.parametrize("target", ["multi", "single", "multi_target"])
def test_train_labels_follow_target(target):
    dataset = make_dataset(32, pixel_is_position=True)
    expected = dataset.emotions_single if target == "single" else dataset.emotions_multi

    pixels, labels = batches_of(
        make_train_dataset(dataset, target, 32, 1, 0, 1, NO_AUGMENTATION), 1
    )[0]
    positions = positions_in(pixels)

    assert np.array_equal(labels[:, :8], expected[positions])
    assert np.array_equal(labels[:, 8:], dataset.emotions_single[positions])


def test_train_labels_probability_drawn():
    dataset = make_dataset(64, pixel_is_position=True)

    pixels, labels = batches_of(
        make_train_dataset(dataset, "probability", 64, 1, 0, 1, NO_AUGMENTATION), 1
    )[0]
    positions = positions_in(pixels)
    drawn = labels[:, :8]

    assert drawn.sum(axis=1).tolist() == [1.0] * 64
    assert np.all(dataset.emotions_multi[positions][drawn == 1] > 0)
    assert not np.array_equal(drawn, dataset.emotions_single[positions])


def test_train_batches_resume_identically():
    dataset = make_dataset(40)

    def pipeline(first_epoch):
        return make_train_dataset(dataset, "probability", 8, 3, first_epoch, 4, FULL_AUGMENTATION)

    from_start = batches_of(pipeline(0), 20)
    resumed = batches_of(pipeline(2), 10)

    assert len(resumed) == 10
    for (pixels, labels), (expected_pixels, expected_labels) in zip(
        resumed, from_start[10:], strict=True
    ):
        assert np.array_equal(pixels, expected_pixels)
        assert np.array_equal(labels, expected_labels)


def test_train_batches_need_full_batch():
    with pytest.raises(ValueError, match="has 10 images, fewer than batch_size 16"):
        make_train_dataset(make_dataset(10), "multi", 16, 1, 0, 1, NO_AUGMENTATION)


def test_validation_batches_in_order():
    dataset = make_dataset(20, pixel_is_position=True)

    batches = batches_of(make_validation_dataset(dataset, "probability", 8), 5)

    assert [len(pixels) for pixels, _ in batches] == [8, 8, 4]
    assert sum((positions_in(pixels) for pixels, _ in batches), []) == list(range(20))
    assert np.array_equal(
        np.concatenate([labels for _, labels in batches])[:, :8], dataset.emotions_multi
    )


# Params.


def test_params_file_train_section_valid():
    config = TrainConfig.from_params(read_params_file(REPOSITORY / "params.yaml")["train"])

    assert config.model == "compact_cnn"


def test_params_unknown_key():
    with pytest.raises(ParamsError, match="unknown key train.dropout"):
        TrainConfig.from_params(SMALL_PARAMS | {"dropout": 0.5})


def test_params_bad_choice_lists_choices():
    with pytest.raises(ParamsError, match="train.optimizer is 'rmsprop', expected one of 'adam'"):
        config_with(optimizer="rmsprop")


def test_params_multi_target_with_mse():
    with pytest.raises(ParamsError, match="invalid loss 'mse' for target 'multi_target'"):
        config_with(target="multi_target", loss="mse")


def test_params_adam_with_weight_decay():
    with pytest.raises(ParamsError, match="optimizer 'adam' has no weight decay"):
        config_with(optimizer="adam", weight_decay=0.01)


def test_params_drop_epoch_beyond_epochs():
    with pytest.raises(ParamsError, match="drop_epochs contains 5, not below train.epochs 5"):
        config_with(schedule="step", epochs=5, drop_epochs=[2, 5])


def test_params_empty_drop_epochs():
    with pytest.raises(ParamsError, match="drop_epochs is empty"):
        config_with(schedule="step", epochs=5, drop_epochs=[])


def test_params_warmup_not_below_epochs():
    with pytest.raises(ParamsError, match="warmup_epochs 3 must be below train.epochs 3"):
        config_with(schedule="cosine", epochs=3, warmup_epochs=3)


def test_params_drop_epochs_sorted():
    assert config_with(schedule="step", epochs=9, drop_epochs=[6, 3]).drop_epochs == (3, 6)


# Data checks, devices and optimizer.


def test_check_data_wrong_image_shape():
    dataset = make_dataset(4)
    dataset.images = dataset.images[:, :32]

    with pytest.raises(ValueError, match=r"training set: images are uint8 \(4, 32, 48, 1\)"):
        check_training_data(dataset, "training set")


def test_check_data_names_bad_row():
    dataset = make_dataset(4)
    dataset.emotions_multi[2] = 0

    with pytest.raises(ValueError, match="emotions_multi row 2 \\(image image002.png\\)"):
        check_training_data(dataset, "validation set")


def test_chief_task_rules():
    assert is_chief_task(None, None, False)
    assert is_chief_task("chief", 0, True)
    assert is_chief_task("worker", 0, False)
    assert not is_chief_task("worker", 0, True)
    assert not is_chief_task("worker", 1, False)


def test_resolve_switch_values():
    assert resolve_switch("xla", "auto", gpu_present=True)
    assert not resolve_switch("xla", "auto", gpu_present=False)
    assert resolve_switch("xla", "on", gpu_present=False)
    assert not resolve_switch("xla", "off", gpu_present=True)


def test_resolve_switch_rejects_other():
    with pytest.raises(ValueError, match="invalid xla 'yes'"):
        resolve_switch("xla", "yes", gpu_present=False)


def test_adamw_skips_bias_decay():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([np.ones((2, 1), np.float32), np.ones(1, np.float32)])
    schedule = EpochSchedule("constant", 0.1, steps_per_epoch=1, epochs=1)
    optimizer = make_optimizer(config_with(optimizer="adamw", weight_decay=0.5), schedule)

    # Zero gradients move Adam nowhere, so only the decay, 0.1 * 0.5 of each weight, remains.
    optimizer.apply_gradients(
        [(tf.zeros_like(variable), variable) for variable in model.trainable_variables]
    )
    kernel, bias = model.get_weights()

    assert kernel.ravel().tolist() == pytest.approx([0.95, 0.95])
    assert bias.tolist() == [1.0]


# Resume checkpoints.


def compiled_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_resume_store_roundtrip(tmp_path):
    model = compiled_model()
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4, verbose=0)
    best_weights = [weight + 1 for weight in model.get_weights()]
    state = ResumeState("abc", 2, 1, 0.5, "best-1.npz")
    store = ResumeStore(tmp_path)

    store.save(model, state, best_weights)
    restored = compiled_model()
    loaded_state = store.load_state("abc")
    loaded_best = store.restore(restored, loaded_state)

    assert loaded_state == state
    assert int(restored.optimizer.iterations) == 2
    for restored_weight, weight in zip(restored.get_weights(), model.get_weights(), strict=True):
        assert np.array_equal(restored_weight, weight)
    for loaded, expected in zip(loaded_best, best_weights, strict=True):
        assert np.array_equal(loaded, expected)


def test_resume_store_keeps_latest_only(tmp_path):
    model = compiled_model()
    store = ResumeStore(tmp_path)

    store.save(model, ResumeState("abc", 1, 0, 0.5, "best-0.npz"), model.get_weights())
    store.save(model, ResumeState("abc", 2, 0, 0.5, "best-0.npz"), None)
    store.save(model, ResumeState("abc", 3, 2, 0.7, "best-2.npz"), model.get_weights())

    assert sorted(path.name for path in tmp_path.iterdir()) == ["best-2.npz", "epoch-3"]
    assert store.load_state("abc").epochs_done == 3


def test_resume_store_ignores_other_fingerprint(tmp_path, caplog):
    model = compiled_model()
    store = ResumeStore(tmp_path)
    store.save(model, ResumeState("abc", 1, 0, 0.5, "best-0.npz"), model.get_weights())

    with caplog.at_level(logging.WARNING):
        state = store.load_state("xyz")

    assert state is None
    assert "changed since it was written" in caplog.text


def test_fingerprint_changes():
    train, validation = make_dataset(8, seed=1), make_dataset(4, seed=2)
    base = training_fingerprint(SMALL_PARAMS, 1, train, validation)
    changed_images = make_dataset(8, seed=1)
    changed_images.images[0, 0, 0, 0] += 1

    assert training_fingerprint(SMALL_PARAMS, 1, train, validation) == base
    assert training_fingerprint(SMALL_PARAMS, 2, train, validation) != base
    assert training_fingerprint(SMALL_PARAMS | {"epochs": 2}, 1, train, validation) != base
    assert training_fingerprint(SMALL_PARAMS, 1, changed_images, validation) != base


# Training runs.


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def test_train_one_epoch_smoke(tmp_path):
    outputs = output_paths(tmp_path)
    keras.utils.set_random_seed(1)

    result = train_model(
        config_with(), 1, make_dataset(64), make_dataset(32, 1), one_device(), outputs
    )
    model = load_trained_model(outputs.model)
    probabilities = model.predict(make_dataset(5, 2).images, verbose=0)

    assert result.best_epoch == 0
    assert result.first_epoch == 0
    assert probabilities.shape == (5, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not outputs.resume.exists()
    curves = outputs.live / "plots" / "metrics"
    assert read_tsv(curves / "train" / "loss.tsv")["step"].tolist() == [0]
    assert (curves / "val" / "accuracy.tsv").is_file()
    assert (curves / "learning_rate.tsv").is_file()
    assert json.loads((outputs.live / "metrics.json").read_text())["best"]["step"] == 0


class Interrupted(Exception):
    """Raised by a test to stop training as an interruption would."""


def train_until_interrupted(monkeypatch, config, train, validation, outputs, last_epoch):
    """Train, stopping with Interrupted right after the checkpoint of `last_epoch` is written."""
    save_checkpoint = ResumeCheckpoint.on_epoch_end

    def interrupt_after_last_epoch(self, epoch, logs=None):
        save_checkpoint(self, epoch, logs)
        if epoch == last_epoch:
            raise Interrupted

    monkeypatch.setattr(ResumeCheckpoint, "on_epoch_end", interrupt_after_last_epoch)
    with pytest.raises(Interrupted):
        train_model(config, 1, train, validation, one_device(), outputs)
    monkeypatch.setattr(ResumeCheckpoint, "on_epoch_end", save_checkpoint)


def test_train_resumes_after_interruption(tmp_path, monkeypatch, caplog):
    outputs = output_paths(tmp_path)
    config = config_with(epochs=3, schedule="step", drop_epochs=[2])
    train, validation = make_dataset(64), make_dataset(32, 1)

    train_until_interrupted(monkeypatch, config, train, validation, outputs, last_epoch=1)
    state = json.loads((outputs.resume / "epoch-2" / "state.json").read_text())

    with caplog.at_level(logging.INFO):
        result = train_model(config, 1, train, validation, one_device(), outputs)
    losses = read_tsv(outputs.live / "plots" / "metrics" / "train" / "loss.tsv")
    rates = read_tsv(outputs.live / "plots" / "metrics" / "learning_rate.tsv")

    assert state["epochs_done"] == 2
    assert result.first_epoch == 2
    assert "resuming after epoch 2 of 3" in caplog.text
    assert "epoch 3/3" in caplog.text
    assert "epoch 1/3" not in caplog.text
    assert losses["step"].tolist() == [0, 1, 2]
    assert rates["learning_rate"].tolist() == pytest.approx([0.003, 0.003, 0.0015])
    assert not outputs.resume.exists()
    assert outputs.model.is_file()


def test_train_resume_after_last_epoch(tmp_path, monkeypatch, caplog):
    outputs = output_paths(tmp_path)
    config = config_with(epochs=2)
    train, validation = make_dataset(64), make_dataset(32, 1)

    train_until_interrupted(monkeypatch, config, train, validation, outputs, last_epoch=1)
    state = json.loads((outputs.resume / "epoch-2" / "state.json").read_text())
    with np.load(outputs.resume / state["best_weights_file"]) as stored:
        best_weights = [stored[f"arr_{position}"] for position in range(len(stored.files))]
    with caplog.at_level(logging.INFO):
        result = train_model(config, 1, train, validation, one_device(), outputs)
    saved = load_trained_model(outputs.model).get_weights()

    assert result.first_epoch == 2
    assert result.best_epoch == state["best_epoch"]
    assert "epoch 2/2" not in caplog.text
    assert len(saved) == len(best_weights)
    for saved_weight, best_weight in zip(saved, best_weights, strict=True):
        assert np.array_equal(saved_weight, best_weight)
    assert not outputs.resume.exists()


def test_train_mixed_precision_exports_float32(tmp_path):
    outputs = output_paths(tmp_path)
    devices = one_device()
    devices.mixed_precision_policy = "mixed_bfloat16"
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        train_model(config_with(), 1, make_dataset(32), make_dataset(16, 1), devices, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = load_trained_model(outputs.model)

    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.predict(make_dataset(2).images, verbose=0).dtype == np.float32


def write_project(root: Path, epochs: int) -> None:
    """Write params.yaml (base and train sections) and data/split/train and val, but no test."""
    params = read_params_file(REPOSITORY / "params.yaml")
    # Op determinism and mixed precision would stay switched on for later tests in this process.
    train = params["train"] | {
        "epochs": epochs,
        "batch_size": 16,
        "warmup_epochs": 0,
        "distribution": "auto",
        "mixed_precision": "off",
        "deterministic": False,
    }
    with open(root / "params.yaml", "w") as stream:
        YAML(typ="safe", pure=True).dump({"base": params["base"], "train": train}, stream)
    save_dataset(root / "data" / "split" / "train", make_dataset(48))
    save_dataset(root / "data" / "split" / "val", make_dataset(16, 1))


def test_train_stage_writes_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, epochs=1)

    runpy.run_path(str(REPOSITORY / "stages" / "train.py"), run_name="__main__")

    assert load_trained_model(tmp_path / "models" / "model.keras").output_shape == (None, 8)
    assert (tmp_path / "dvclive" / "metrics.json").is_file()
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == ["model.keras"]


def test_train_stage_bad_params_exit(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, epochs=0)

    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPOSITORY / "stages" / "train.py"), run_name="__main__")

    assert exit_info.value.code == 1
    assert "train.epochs is 0, expected an integer >= 1" in caplog.text
    assert not (tmp_path / "models").exists()
