"""Export of the trained model for serving: a TensorFlow SavedModel and a TensorFlow Lite file.

Both artifacts take float32 raw pixels of shape (N, 48, 48, 1), 0-255, because the model scales
them itself, and return (N, 8) float32 softmax probabilities in EMOTIONS order:
- saved_model/: signature "serving_default" with the keyword input "images" and the output key
  "probabilities". The `serve` method of the loaded object is the same function.
- model.tflite: signature "serving_default" with the same input and output names. Its input
  tensor has shape (1, 48, 48, 1) until the interpreter resizes it.

Both run the model in inference mode, so augmentation layers inside the model pass images
through unchanged and batch normalization uses its moving statistics.
"""

import logging
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ferplus import IMAGE_SIZE
from ferplus.fileio import atomic_path

SAVED_MODEL_DIRECTORY = "saved_model"
TFLITE_FILE = "model.tflite"
ENDPOINT_NAME = "serve"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"

CHECK_IMAGE_COUNT = 32
"""Random images on which the exported artifacts must reproduce the Keras model."""


logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """An exported artifact that disagrees with the Keras model: the message names it."""


def compute_dtypes(model: keras.Model) -> set[str]:
    """Return the compute dtypes of all layers of `model`, including those of nested models."""
    dtypes = set()
    for layer in model.layers:
        dtypes.add(layer.compute_dtype)
        if isinstance(layer, keras.Model):
            dtypes |= compute_dtypes(layer)
    return dtypes


def float32_copy(model: keras.Model) -> keras.Model:
    """Return a copy of `model` whose layers all compute in float32, with the same weights.

    A model trained under the mixed_float16 or mixed_bfloat16 policy computes in 16 bits, and the
    TensorFlow Lite converter of TensorFlow 2.21 rejects its 16-bit Conv2D, MatMul, Mul and other
    ops unless TF Select ops are enabled. Mixed precision keeps the weights in float32, so the copy
    loses nothing. Its probabilities differ from the 16-bit ones by rounding only.
    """

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def write_saved_model(model: keras.Model, directory: str | os.PathLike) -> None:
    """Write `model` as a SavedModel whose signature takes float32 (None, 48, 48, 1) "images".

    `model.export(format="tf_saved_model")` (Keras 3.15) traces `model(images)` without
    training=False, so augmentation layers such as RandomFlip, whose call defaults to
    training=True, would alter every image. The endpoint below calls the model in inference mode.
    """

    def serve(images):
        return {OUTPUT_NAME: model(images, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=ENDPOINT_NAME,
        fn=serve,
        input_signature=[
            keras.InputSpec(
                shape=(None, IMAGE_SIZE, IMAGE_SIZE, 1), dtype="float32", name=INPUT_NAME
            )
        ],
    )
    archive.write_out(str(directory), verbose=False)


def convert_to_tflite(saved_model_directory: str | os.PathLike) -> bytes:
    """Convert the SavedModel's serving signature to a float32 TensorFlow Lite model.

    Converting the SavedModel, not the Keras model, makes both artifacts share one traced graph.
    No optimization or quantization is applied, so the weights stay float32.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_directory), signature_keys=[SIGNATURE_NAME]
    )
    return converter.convert()


def run_saved_model(directory: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Return the (N, 8) probabilities of an exported SavedModel for (N, 48, 48, 1) pixels."""
    loaded = tf.saved_model.load(str(directory))
    signature = loaded.signatures[SIGNATURE_NAME]
    outputs = signature(**{INPUT_NAME: tf.constant(images, dtype=tf.float32)})
    return outputs[OUTPUT_NAME].numpy()


def run_tflite(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Return the (N, 8) probabilities of an exported TensorFlow Lite model."""
    with warnings.catch_warnings():
        # TensorFlow 2.21 warns that tf.lite.Interpreter moves to the ai_edge_litert package;
        # it still works here, and the project does not depend on ai_edge_litert.
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SIGNATURE_NAME)
    outputs = runner(**{INPUT_NAME: np.asarray(images, dtype=np.float32)})
    return outputs[OUTPUT_NAME]


def make_check_images(seed: int, count: int = CHECK_IMAGE_COUNT) -> np.ndarray:
    """Return `count` uniform random (48, 48, 1) images, float32 pixels 0-255."""
    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 1))
    return pixels.astype(np.float32)


def compare_exports(
    model: keras.Model, directory: str | os.PathLike, images: np.ndarray, tolerance: float
) -> dict[str, float]:
    """Return each artifact's maximum absolute difference from the Keras model's probabilities.

    Raises ExportError when an artifact differs by more than `tolerance`.
    """
    directory = Path(directory)
    expected = model.predict(images, batch_size=len(images), verbose=0)
    differences = {
        SAVED_MODEL_DIRECTORY: run_saved_model(directory / SAVED_MODEL_DIRECTORY, images),
        TFLITE_FILE: run_tflite(directory / TFLITE_FILE, images),
    }
    differences = {
        name: float(np.max(np.abs(probabilities - expected)))
        for name, probabilities in differences.items()
    }
    for name, difference in differences.items():
        if not difference <= tolerance:  # a NaN difference fails too
            raise ExportError(
                f"{name}: probabilities differ from the Keras model by up to {difference:.3g} "
                f"on {len(images)} check images, more than export.tolerance = {tolerance:g}"
            )
    return differences


def export_model(
    model: keras.Model, directory: str | os.PathLike, check_images: np.ndarray, tolerance: float
) -> dict[str, float]:
    """Write saved_model/ and model.tflite into `directory` atomically, after checking them.

    A model with 16-bit layers (mixed precision) is exported as its float32_copy. Both artifacts
    are built in a temporary folder beside `directory`, compared on `check_images` with the model
    they were made from (see compare_exports), and only then renamed to `directory`. On any error
    the previous `directory` stays as it was. Returns the differences of compare_exports.
    """
    dtypes = compute_dtypes(model)
    if dtypes != {"float32"}:
        exported = float32_copy(model)
        rounding = np.max(
            np.abs(
                exported.predict(check_images, verbose=0) - model.predict(check_images, verbose=0)
            )
        )
        logger.info(
            "exporting a float32 copy of the model, whose layers compute in %s. The copy's "
            "probabilities differ from the model's by up to %.3g on the check images",
            ", ".join(sorted(dtypes)),
            rounding,
        )
    else:
        exported = model

    with atomic_path(directory) as temporary:
        temporary.mkdir()
        write_saved_model(exported, temporary / SAVED_MODEL_DIRECTORY)
        (temporary / TFLITE_FILE).write_bytes(convert_to_tflite(temporary / SAVED_MODEL_DIRECTORY))
        return compare_exports(exported, temporary, check_images, tolerance)
