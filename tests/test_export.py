"""Tests of the export to a SavedModel and a TensorFlow Lite file, and of the export stage."""

import runpy
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ferplus import EMOTIONS
from ferplus.export import (
    CHECK_IMAGE_COUNT,
    ExportError,
    compare_exports,
    compute_dtypes,
    export_model,
    float32_copy,
    make_check_images,
    run_saved_model,
    run_tflite,
)

TOLERANCE = 1e-5
"""Maximum absolute probability difference allowed between Keras and an exported artifact."""

STAGE_SCRIPT = Path(__file__).resolve().parents[1] / "stages" / "export.py"


def tiny_model(augment: bool = False, seed: int = 5) -> keras.Model:
    """Return a small untrained model with the contract of models/model.keras."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(48, 48, 1))
    features = inputs
    if augment:
        # A fixed quarter turn in training mode, so an export that ran it could not match.
        features = keras.layers.RandomRotation(factor=(0.25, 0.25))(features)
    features = keras.layers.Rescaling(1 / 255)(features)
    features = keras.layers.Conv2D(4, 3, activation="relu")(features)
    features = keras.layers.BatchNormalization()(features)
    features = keras.layers.MaxPooling2D(4)(features)
    features = keras.layers.Flatten()(features)
    outputs = keras.layers.Dense(len(EMOTIONS), activation="softmax")(features)
    return keras.Model(inputs, outputs)


def check_images(count: int = 6) -> np.ndarray:
    return make_check_images(seed=11, count=count)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[keras.Model, Path]:
    """The tiny model and the folder export_model wrote for it."""
    model = tiny_model()
    directory = tmp_path_factory.mktemp("models") / "export"
    export_model(model, directory, make_check_images(seed=1, count=4), TOLERANCE)
    return model, directory


def test_export_writes_both_artifacts(exported):
    _, directory = exported
    assert (directory / "saved_model" / "saved_model.pb").is_file()
    assert (directory / "model.tflite").stat().st_size > 0
    assert sorted(path.name for path in directory.iterdir()) == ["model.tflite", "saved_model"]


def test_export_leaves_no_temporary(exported):
    _, directory = exported
    assert [path.name for path in directory.parent.iterdir()] == ["export"]


def test_saved_model_matches_keras(exported):
    model, directory = exported
    images = check_images()
    expected = model.predict(images, verbose=0)
    probabilities = run_saved_model(directory / "saved_model", images)
    assert probabilities.shape == (6, 8)
    assert np.abs(probabilities - expected).max() <= TOLERANCE


def test_tflite_matches_keras(exported):
    model, directory = exported
    images = check_images()
    expected = model.predict(images, verbose=0)
    probabilities = run_tflite(directory / "model.tflite", images)
    assert probabilities.shape == (6, 8)
    assert np.abs(probabilities - expected).max() <= TOLERANCE


def test_saved_model_readme_snippet(exported):
    model, directory = exported
    images = check_images(3)
    # The README's snippet, with the path of this test's export.
    loaded = tf.saved_model.load(str(directory / "saved_model"))
    serving = loaded.signatures["serving_default"]
    probabilities = serving(images=tf.constant(images, dtype=tf.float32))["probabilities"].numpy()
    same_through_serve = loaded.serve(tf.constant(images, dtype=tf.float32))["probabilities"]

    expected = model.predict(images, verbose=0)
    assert list(serving.structured_input_signature[1]) == ["images"]
    assert list(serving.structured_outputs) == ["probabilities"]
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    assert np.array_equal(same_through_serve.numpy(), probabilities)


def test_tflite_readme_snippets(exported):
    model, directory = exported
    images = check_images(3)
    # The README's two snippets: the signature runner, then plain input and output tensors.
    interpreter = tf.lite.Interpreter(model_path=str(directory / "model.tflite"))
    runner = interpreter.get_signature_runner("serving_default")
    by_signature = runner(images=images.astype(np.float32))["probabilities"]

    interpreter = tf.lite.Interpreter(model_path=str(directory / "model.tflite"))
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(input_details["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_details["index"], images.astype(np.float32))
    interpreter.invoke()
    by_tensor = interpreter.get_tensor(output_details["index"])

    expected = model.predict(images, verbose=0)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}
    }
    assert input_details["dtype"] == np.float32
    assert list(input_details["shape_signature"]) == [-1, 48, 48, 1]
    assert list(output_details["shape_signature"]) == [-1, 8]
    assert np.abs(by_signature - expected).max() <= TOLERANCE
    assert np.abs(by_tensor - expected).max() <= TOLERANCE


def test_export_ignores_augmentation_layers(tmp_path):
    model = tiny_model(augment=True)
    images = check_images()
    differences = export_model(model, tmp_path / "export", images, TOLERANCE)
    expected = model.predict(images, verbose=0)
    probabilities = run_saved_model(tmp_path / "export" / "saved_model", images)
    assert differences["saved_model"] <= TOLERANCE
    assert differences["model.tflite"] <= TOLERANCE
    assert np.abs(probabilities - expected).max() <= TOLERANCE


def test_compare_rejects_other_model(exported):
    _, directory = exported
    with pytest.raises(ExportError, match="saved_model: probabilities differ"):
        compare_exports(tiny_model(seed=6), directory, check_images(), TOLERANCE)


def test_export_failure_keeps_previous(tmp_path):
    directory = tmp_path / "export"
    directory.mkdir()
    (directory / "previous.txt").write_text("kept")
    wrong_shape = np.zeros((2, 10, 10, 1), dtype=np.float32)
    with pytest.raises(ValueError):
        export_model(tiny_model(), directory, wrong_shape, TOLERANCE)
    assert [path.name for path in tmp_path.iterdir()] == ["export"]
    assert [path.name for path in directory.iterdir()] == ["previous.txt"]


def test_check_images_seeded():
    first = make_check_images(seed=3)
    assert first.shape == (CHECK_IMAGE_COUNT, 48, 48, 1)
    assert first.dtype == np.float32
    assert first.min() >= 0
    assert first.max() <= 255
    assert np.array_equal(first, make_check_images(seed=3))
    assert not np.array_equal(first, make_check_images(seed=4))


def mixed_precision_model(policy: str = "mixed_float16") -> keras.Model:
    """Return a tiny model built as under a mixed precision policy: 16 bits inside, float32 out."""
    keras.utils.set_random_seed(9)
    inner = keras.Sequential(
        [keras.layers.Conv2D(4, 3, activation="relu", dtype=policy), keras.layers.Flatten()],
        name="inner",
    )
    inputs = keras.Input(shape=(48, 48, 1))
    features = keras.layers.Rescaling(1 / 255, dtype=policy)(inputs)
    features = inner(features)
    logits = keras.layers.Dense(len(EMOTIONS), dtype=policy)(features)
    outputs = keras.layers.Activation("softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs)


def test_compute_dtypes_nested():
    assert compute_dtypes(mixed_precision_model()) == {"float16", "float32"}
    assert compute_dtypes(tiny_model()) == {"float32"}


def test_float32_copy_keeps_weights():
    model = mixed_precision_model()
    copy = float32_copy(model)
    images = check_images()
    assert compute_dtypes(copy) == {"float32"}
    for original, copied in zip(model.weights, copy.weights, strict=True):
        assert np.array_equal(original.numpy(), copied.numpy())
    # Only float16 rounding separates them: a relative precision of 2 ** -11 in the logits.
    assert np.abs(copy.predict(images, verbose=0) - model.predict(images, verbose=0)).max() < 1e-2


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_export_mixed_precision_model(tmp_path, policy):
    model = mixed_precision_model(policy)
    images = check_images()
    differences = export_model(model, tmp_path / "export", images, TOLERANCE)
    expected = float32_copy(model).predict(images, verbose=0)
    probabilities = run_tflite(tmp_path / "export" / "model.tflite", images)
    assert differences["model.tflite"] <= TOLERANCE
    assert np.abs(probabilities - expected).max() <= TOLERANCE


def write_params(directory: Path, tolerance: str = "1.0e-5") -> None:
    (directory / "params.yaml").write_text(f"base:\n  seed: 4\nexport:\n  tolerance: {tolerance}\n")


def test_stage_writes_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    (tmp_path / "models").mkdir()
    tiny_model().save(tmp_path / "models" / "model.keras")
    runpy.run_path(str(STAGE_SCRIPT), run_name="__main__")
    assert (tmp_path / "models" / "export" / "saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "models" / "export" / "model.tflite").is_file()
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [
        "export",
        "model.keras",
    ]


def test_stage_missing_model(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(STAGE_SCRIPT), run_name="__main__")
    assert caught.value.code == 1
    assert "models/model.keras: model file not found" in caplog.text
    assert not (tmp_path / "models" / "export").exists()


def test_stage_invalid_tolerance(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tolerance="0")
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(STAGE_SCRIPT), run_name="__main__")
    assert caught.value.code == 1
    assert "export.tolerance is 0" in caplog.text
