"""Tests of the model registry: shapes, exact parameter counts, softmax output, save and load."""

import keras
import numpy as np
import pytest

from ferplus.models import (
    MODEL_NAMES,
    build_model,
    count_parameters,
    load_trained_model,
    save_trained_model,
)

# VGG16's 13 convolutions on a 3-channel input, as 3x3 kernels plus biases:
# 64: 3*9*64+64 = 1,792 and 64*9*64+64 = 36,928; 128: 73,856 and 147,584;
# 256: 295,168 and 2 x 590,080; 512: 1,180,160 and 2 x 2,359,808; 512: 3 x 2,359,808.
VGG16_CONVOLUTIONS = 14_714_688
DENSE_4096_TO_4096 = 4096 * 4096 + 4096  # 16,781,312
DENSE_4096_TO_8 = 4096 * 8 + 8  # 32,776

EXPECTED_PARAMETERS = {
    # Dense 4096 on the 1,475 combined averages: 1475 * 4096 + 4096 = 6,045,696.
    "vgg16_combined": VGG16_CONVOLUTIONS + 6_045_696 + DENSE_4096_TO_4096 + DENSE_4096_TO_8,
    # Dense 4096 on the 512 averages of block 5: 512 * 4096 + 4096 = 2,101,248.
    "vgg16_plain": VGG16_CONVOLUTIONS + 2_101_248 + DENSE_4096_TO_4096 + DENSE_4096_TO_8,
    # Convolutions on 1 channel: 640 + 36,928 + 73,856 + 147,584 + 295,168 + 5 x 590,080
    # = 3,504,576; Dense 1024 on the 3x3x256 = 2,304 flattened features: 2,360,320;
    # Dense 1024 to 1024: 1,049,600; Dense 1024 to 8: 8,200.
    "vgg13": 3_504_576 + 2_360_320 + 1_049_600 + 8_200,
    # Convolutions without bias, 3x3: 1*9*32 = 288, 32*9*48 = 13,824, 48*9*48 = 20,736,
    # 48*9*96 = 41,472, 96*9*96 = 82,944, 96*9*192 = 165,888, 192*9*192 = 331,776 (656,928);
    # batch normalization, 4 values per channel: 4 * (32 + 2*48 + 2*96 + 2*192) = 2,816;
    # Dense 192 to 8: 1,544.
    "compact_cnn": 656_928 + 2_816 + 1_544,
}


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    return {name: build_model(name) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_shapes(models, name):
    model = models[name]

    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, 8)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_parameter_count(models, name):
    assert count_parameters(models[name]) == EXPECTED_PARAMETERS[name]


def test_vgg16_combined_exact_count(models):
    assert count_parameters(models["vgg16_combined"]) == 37_574_472


def test_vgg16_combined_feature_width(models):
    features = models["vgg16_combined"].get_layer("combined_features")

    assert features.output.shape == (None, 3 + 64 + 128 + 256 + 512 + 512)


@pytest.mark.parametrize("name", ["compact_cnn", "vgg13"])
def test_model_output_is_distribution(models, name):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)

    probabilities = models[name].predict(pixels, verbose=0)

    assert probabilities.dtype == np.float32
    assert probabilities.shape == (4, 8)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("compact_cnn")
    finally:
        keras.mixed_precision.set_global_policy("float32")

    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


def test_build_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="invalid model 'resnet'") as error:
        build_model("resnet")

    for name in MODEL_NAMES:
        assert repr(name) in str(error.value)


def test_count_parameters_small_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])

    assert count_parameters(model) == 4 * 3 + 3


def test_save_and_load_roundtrip(models, tmp_path):
    model = models["compact_cnn"]
    path = tmp_path / "models" / "model.keras"
    pixels = np.random.default_rng(1).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8)

    save_trained_model(model, path)
    loaded = load_trained_model(path)

    np.testing.assert_allclose(
        loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6
    )
    assert [file.name for file in path.parent.iterdir()] == ["model.keras"]


def test_save_rejects_other_suffix(models, tmp_path):
    with pytest.raises(ValueError, match="must end in .keras"):
        save_trained_model(models["compact_cnn"], tmp_path / "model.h5")


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_trained_model(tmp_path / "absent.keras")


def test_load_rejects_wrong_output(tmp_path):
    inputs = keras.Input((48, 48, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    path = tmp_path / "three.keras"
    keras.Model(inputs, outputs).save(path)

    with pytest.raises(ValueError, match=r"three.keras: the model maps .* expected"):
        load_trained_model(path)
