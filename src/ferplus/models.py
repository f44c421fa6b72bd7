"""The model registry: Keras models that map raw 48x48 grayscale pixels to 8 emotion probabilities.

Every model takes raw pixels of shape (48, 48, 1) in 0-255 (uint8 or float) and scales them with
its own Rescaling layer, so callers never preprocess. Every model ends in an 8-way softmax over
EMOTIONS that stays float32 under a mixed precision policy. The models use built-in Keras layers
only, so a saved model loads with `safe_mode=True` and no custom objects.
"""

import os
from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from ferplus import EMOTIONS, IMAGE_SIZE
from ferplus.params import check_choice

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""VGG16's convolution blocks: (filters, convolutions) before each 2x2 max pooling."""

VGG13_BLOCKS = ((64, 2), (128, 2), (256, 3), (256, 3))
"""The FER+ VGG13 convolution blocks (Barsoum et al. 2016, Figure 2), as (filters, convolutions)."""

COMPACT_CNN_BLOCKS = ((32, 1), (48, 2), (96, 2), (192, 2))
"""compact_cnn's stages as (filters, convolutions), at 48, 24, 12 and 6 pixels per side."""


def _softmax_head(features: keras.KerasTensor) -> keras.KerasTensor:
    """Return 8 emotion probabilities; the softmax runs in float32 under mixed precision."""
    logits = layers.Dense(len(EMOTIONS), name="logits")(features)
    return layers.Activation("softmax", dtype="float32", name="emotions")(logits)


def _vgg_convolutions(
    features: keras.KerasTensor, block: int, filters: int, convolutions: int
) -> keras.KerasTensor:
    """Apply one VGG block's 3x3 ReLU convolutions, named block{block}_conv1, _conv2, ..."""
    for convolution in range(1, convolutions + 1):
        features = layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            name=f"block{block}_conv{convolution}",
        )(features)
    return features


def _vgg16_blocks(images: keras.KerasTensor) -> list[keras.KerasTensor]:
    """Apply VGG16's 13 convolutions and 5 poolings; return the output of every pooling."""
    pooled = []
    features = images
    for block, (filters, convolutions) in enumerate(VGG16_BLOCKS, start=1):
        features = _vgg_convolutions(features, block, filters, convolutions)
        features = layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{block}_pool")(
            features
        )
        pooled.append(features)
    return pooled


def _vgg16_input(inputs: keras.KerasTensor) -> keras.KerasTensor:
    """Scale 0-255 pixels to [-1, 1] and repeat the gray channel 3 times, as VGG16 expects RGB."""
    scaled = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inputs)
    return layers.Concatenate(name="gray_to_rgb")([scaled, scaled, scaled])


def build_vgg16_combined() -> keras.Model:
    """Build the reference notebook's VGG16 with features pooled from every block.

    The global average of the 3-channel input and of each block's pooled output are concatenated
    (3 + 64 + 128 + 256 + 512 + 512 = 1,475 values) and feed two Dense 4096 layers with dropout
    0.2. 37,574,472 parameters.
    """
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    images = _vgg16_input(inputs)
    pooled = _vgg16_blocks(images)
    averages = [layers.GlobalAveragePooling2D(name="input_average")(images)]
    for block, features in enumerate(pooled, start=1):
        averages.append(layers.GlobalAveragePooling2D(name=f"block{block}_average")(features))
    features = layers.Concatenate(name="combined_features")(averages)
    for number in (1, 2):
        features = layers.Dense(4096, activation="relu", name=f"dense{number}")(features)
        features = layers.Dropout(0.2, name=f"dropout{number}")(features)
    return keras.Model(inputs, _softmax_head(features), name="vgg16_combined")


def build_vgg16_plain() -> keras.Model:
    """Build VGG16 with a global average of the last block only and no dropout.

    33,630,024 parameters.
    """
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    pooled = _vgg16_blocks(_vgg16_input(inputs))
    features = layers.GlobalAveragePooling2D(name="block5_average")(pooled[-1])
    for number in (1, 2):
        features = layers.Dense(4096, activation="relu", name=f"dense{number}")(features)
    return keras.Model(inputs, _softmax_head(features), name="vgg16_plain")


def build_vgg13() -> keras.Model:
    """Build the VGG13 of the FER+ paper (Barsoum et al. 2016) for 48x48 instead of 64x64 input.

    Each convolution block ends in 2x2 max pooling and dropout 0.25; two Dense 1024 layers with
    dropout 0.5 follow the flattened 3x3x256 features. 6,922,696 parameters.
    """
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    features = layers.Rescaling(1 / 255, name="rescaling")(inputs)
    for block, (filters, convolutions) in enumerate(VGG13_BLOCKS, start=1):
        features = _vgg_convolutions(features, block, filters, convolutions)
        features = layers.MaxPooling2D(2, name=f"block{block}_pool")(features)
        features = layers.Dropout(0.25, name=f"block{block}_dropout")(features)
    features = layers.Flatten(name="flatten")(features)
    for number in (1, 2):
        features = layers.Dense(1024, activation="relu", name=f"dense{number}")(features)
        features = layers.Dropout(0.5, name=f"dropout{number}")(features)
    return keras.Model(inputs, _softmax_head(features), name="vgg13")


def build_compact_cnn() -> keras.Model:
    """Build a small CNN for 48x48 grayscale that trains fast on a CPU.

    It has a single 32-filter convolution at full resolution, where convolutions cost the most,
    then three stages of two 3x3 convolutions with 48, 96 and 192 filters at 24, 12 and 6 pixels.
    Every convolution is followed by batch normalization and ReLU, and max pooling separates the
    stages. A global average and dropout 0.3 come before the softmax. 661,288 parameters and
    56 million multiply-accumulates per image, against 493 million for vgg13 and 727 million
    for vgg16_combined.

    It is designed to match the FER+ paper's VGG13 (about 85% on the FER+ test subset) while
    training within an hour on a 2-core CPU. The README's Results table gives what the default
    run reached.
    """
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    features = layers.Rescaling(1 / 255, name="rescaling")(inputs)
    for stage, (filters, convolutions) in enumerate(COMPACT_CNN_BLOCKS, start=1):
        if stage > 1:
            features = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(features)
        for convolution in range(1, convolutions + 1):
            name = f"stage{stage}_conv{convolution}"
            features = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(
                features
            )
            features = layers.BatchNormalization(name=f"{name}_norm")(features)
            features = layers.ReLU(name=f"{name}_relu")(features)
    features = layers.GlobalAveragePooling2D(name="average")(features)
    features = layers.Dropout(0.3, name="dropout")(features)
    return keras.Model(inputs, _softmax_head(features), name="compact_cnn")


MODEL_BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "compact_cnn": build_compact_cnn,
    "vgg16_combined": build_vgg16_combined,
    "vgg16_plain": build_vgg16_plain,
    "vgg13": build_vgg13,
}
"""Every model by its params.yaml name; compact_cnn is the default."""

MODEL_NAMES = tuple(MODEL_BUILDERS)


def build_model(name: str) -> keras.Model:
    """Build a fresh, uncompiled model by name; an unknown name raises ValueError listing names."""
    check_choice("model", name, MODEL_NAMES)
    return MODEL_BUILDERS[name]()


def count_parameters(model: keras.Model) -> int:
    """Return the number of weights of `model`, trainable and not (batch normalization means)."""
    return int(model.count_params())


def save_trained_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save `model` in the Keras format atomically: a temporary .keras file, then a rename."""
    final = Path(path)
    if final.suffix != ".keras":
        raise ValueError(f"{final}: a Keras model file name must end in .keras")
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keras chooses the format by extension, so the temporary name ends in .keras too.
    temporary = final.with_name(f".{final.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(temporary)
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def load_trained_model(path: str | os.PathLike) -> keras.Model:
    """Load a model saved by the train stage, without running any code stored in the file.

    The models use built-in layers only, so no custom objects need registering. Raises
    FileNotFoundError for a missing file and ValueError when the model does not map
    (N, 48, 48, 1) pixels to (N, 8) probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; run the train stage first")
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    input_shape = tuple(model.input_shape)
    output_shape = tuple(model.output_shape)
    if input_shape[1:] != INPUT_SHAPE or output_shape[1:] != (len(EMOTIONS),):
        raise ValueError(
            f"{path}: the model maps {input_shape} to {output_shape}, expected "
            f"(None, {IMAGE_SIZE}, {IMAGE_SIZE}, 1) pixels to (None, {len(EMOTIONS)}) probabilities"
        )
    return model
