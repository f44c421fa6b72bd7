"""Tests of the `predict` command: image preparation, file search, output and exit status."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ferplus import EMOTIONS
from ferplus.evaluation import predict_probabilities
from ferplus.models import load_trained_model
from ferplus.predict import (
    ImageError,
    find_images,
    format_json_line,
    format_table_header,
    format_table_row,
    main,
    prepare_image,
    read_image,
    top_emotion,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny trained-model stand-in: raw pixels in, Rescaling inside, softmax over 8 out."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape=(48, 48, 1))
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    flat = keras.layers.Flatten()(scaled)
    outputs = keras.layers.Dense(len(EMOTIONS), activation="softmax")(flat)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def synthetic_test_split(count: int, seed: int = 3) -> np.ndarray:
    """Return `count` random (48, 48, 1) uint8 images, in the layout of a split's images.npy."""
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(count, 48, 48, 1), dtype=np.uint8)


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for position, image in enumerate(images):
        path = folder / f"face_{position:03d}.png"
        Image.fromarray(image[:, :, 0]).save(path)
        paths.append(path)
    return paths


# prepare_image and read_image


def test_prepare_gray_48_unchanged():
    pixels = synthetic_test_split(1)[0]
    prepared = prepare_image(Image.fromarray(pixels[:, :, 0]))
    assert prepared.dtype == np.uint8
    assert prepared.shape == (48, 48, 1)
    assert np.array_equal(prepared, pixels)


@pytest.mark.parametrize(
    ("colour", "luma"),
    [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29), ((30, 160, 90), 113)],
)
def test_prepare_colour_to_luma(colour, luma):
    prepared = prepare_image(Image.new("RGB", (48, 48), colour))
    assert np.all(prepared == luma)


def test_prepare_palette_looks_up_colour():
    image = Image.new("P", (48, 48), 1)
    image.putpalette([0, 0, 0, 30, 160, 90] + [0, 0, 0] * 254)
    assert np.all(prepare_image(image) == 113)


def test_prepare_rgba_drops_alpha():
    prepared = prepare_image(Image.new("RGBA", (48, 48), (30, 160, 90, 0)))
    assert np.all(prepared == 113)


def test_prepare_16_bit_scales_to_8_bit():
    wide = np.array([[0, 257 * 100, 33024, 65535]], dtype=np.uint16).repeat(48, axis=0)
    wide = np.tile(wide, (1, 12))
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    prepared = prepare_image(image)[0, :4, 0]
    assert prepared.tolist() == [0, 100, 128, 255]


def test_prepare_resizes_constant_image():
    prepared = prepare_image(Image.new("L", (200, 120), 77))
    assert prepared.shape == (48, 48, 1)
    assert np.all(prepared == 77)


def test_prepare_resize_keeps_halves():
    pixels = np.zeros((96, 96), dtype=np.uint8)
    pixels[:, 48:] = 255
    prepared = prepare_image(Image.fromarray(pixels))[:, :, 0]
    assert np.all(prepared[:, :20] == 0)
    assert np.all(prepared[:, 28:] == 255)


def test_prepare_applies_exif_orientation(tmp_path):
    pixels = np.zeros((48, 48), dtype=np.uint8)
    pixels[:24] = 255
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation 3: the stored image is upside down
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif)
    prepared = read_image(path)[:, :, 0]
    assert np.all(prepared[:24] == 0)
    assert np.all(prepared[24:] == 255)


def test_read_jpeg_colour(tmp_path):
    path = tmp_path / "face.jpg"
    Image.new("RGB", (60, 40), (30, 160, 90)).save(path, quality=95)
    prepared = read_image(path)
    assert prepared.shape == (48, 48, 1)
    assert np.all(prepared == 113)


def test_read_16_bit_png(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((48, 48), 257 * 200, dtype=np.uint16)).save(path)
    assert np.all(read_image(path) == 200)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.png", b"not an image", "not a PNG or JPEG image"),
        ("empty.jpg", b"", "not a PNG or JPEG image"),
        ("labels.csv", b"Training,fer0.png,10,0,0,0,0,0,0,0,0,0\n", "not a PNG or JPEG image"),
    ],
)
def test_read_rejects_non_image(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_read_rejects_gif(tmp_path):
    path = tmp_path / "face.gif"
    Image.new("L", (48, 48)).save(path)
    with pytest.raises(ImageError, match="not a PNG or JPEG image"):
        read_image(path)


def test_read_rejects_truncated_png(tmp_path):
    whole = tmp_path / "whole.png"
    Image.fromarray(synthetic_test_split(1)[0, :, :, 0]).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(ImageError, match=r"truncated\.png: unreadable image"):
        read_image(truncated)


def test_read_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"absent\.png: file not found"):
        read_image(tmp_path / "absent.png")


# find_images


def test_find_folder_sorted_images_only(tmp_path):
    for name in ["b.png", "a.JPG", "c.jpeg", "label.csv", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"")
    images, errors = find_images([tmp_path])
    assert images == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "c.jpeg"]
    assert errors == []


def test_find_recursive_includes_subfolders(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"")
    images, errors = find_images([tmp_path], recursive=True)
    assert images == [tmp_path / "b.png", tmp_path / "sub" / "a.png"]
    assert errors == []


def test_find_keeps_argument_order(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.png").write_bytes(b"")
    (tmp_path / "named.dat").write_bytes(b"")
    images, _ = find_images([tmp_path / "z.png", tmp_path / "folder", tmp_path / "named.dat"])
    assert images == [tmp_path / "z.png", tmp_path / "folder" / "a.png", tmp_path / "named.dat"]


def test_find_missing_path_error(tmp_path):
    images, errors = find_images([tmp_path / "absent"])
    assert images == []
    assert errors == [f"{tmp_path / 'absent'}: file or folder not found"]


def test_find_empty_folder_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"")
    images, errors = find_images([tmp_path])
    assert images == []
    assert len(errors) == 1
    assert "folder contains no .png, .jpg, .jpeg files" in errors[0]
    assert "--recursive" in errors[0]


# Output formats


def test_top_emotion_tie_goes_first():
    probabilities = np.array([0.1, 0.4, 0.0, 0.4, 0.1, 0.0, 0.0, 0.0], dtype=np.float32)
    assert top_emotion(probabilities) == "happiness"


def test_table_row_exact():
    probabilities = np.array([0.05, 0.8, 0.1, 0.02, 0.01, 0.01, 0.005, 0.005], dtype=np.float32)
    header = format_table_header()
    row = format_table_row(Path("faces/a.png"), probabilities)
    assert header == (
        "emotion    neutral  happiness  surprise  sadness   anger  disgust    fear  contempt  path"
    )
    assert row == (
        "happiness   0.0500     0.8000    0.1000   0.0200  0.0100   0.0100  0.0050    0.0050"
        "  faces/a.png"
    )


def test_json_line_exact():
    probabilities = np.array([0.5, 0.25, 0.125, 0.125, 0, 0, 0, 0], dtype=np.float32)
    record = json.loads(format_json_line(Path("faces/a.png"), probabilities))
    assert record == {
        "path": "faces/a.png",
        "emotion": "neutral",
        "probabilities": {
            "neutral": 0.5,
            "happiness": 0.25,
            "surprise": 0.125,
            "sadness": 0.125,
            "anger": 0.0,
            "disgust": 0.0,
            "fear": 0.0,
            "contempt": 0.0,
        },
    }
    assert list(record["probabilities"]) == list(EMOTIONS)


# main


def test_main_json_matches_predict_probabilities(tmp_path, model_path, capsys):
    images = synthetic_test_split(10)
    paths = write_pngs(tmp_path / "test", images)
    status = main(
        ["--json", "--batch-size", "4", "--model", str(model_path), str(tmp_path / "test")]
    )
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = predict_probabilities(load_trained_model(model_path), images, 4)
    assert status == 0
    assert [record["path"] for record in records] == [str(path) for path in paths]
    predicted = np.array([list(record["probabilities"].values()) for record in records])
    assert np.array_equal(predicted.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(predicted - expected).max() <= 1e-6
    assert [record["emotion"] for record in records] == [top_emotion(row) for row in expected]


def test_main_table_output(tmp_path, model_path, capsys):
    images = synthetic_test_split(3)
    paths = write_pngs(tmp_path, images)
    status = main(["--model", str(model_path), *map(str, paths)])
    lines = capsys.readouterr().out.splitlines()
    expected = predict_probabilities(load_trained_model(model_path), images, 256)
    assert status == 0
    assert lines[0] == format_table_header()
    assert lines[1:] == [
        format_table_row(path, row) for path, row in zip(paths, expected, strict=True)
    ]


def test_main_bad_file_others_processed(tmp_path, model_path, capsys):
    paths = write_pngs(tmp_path, synthetic_test_split(2))
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    arguments = ["--json", "--model", str(model_path), str(paths[0]), str(broken)]
    status = main([*arguments, str(tmp_path / "absent.png"), str(paths[1])])
    output = capsys.readouterr()
    records = [json.loads(line) for line in output.out.splitlines()]
    assert status == 1
    assert [record["path"] for record in records] == [str(paths[0]), str(paths[1])]
    assert f"{broken}: not a PNG or JPEG image" in output.err
    assert f"{tmp_path / 'absent.png'}: file or folder not found" in output.err


def test_main_missing_model(tmp_path, capsys):
    paths = write_pngs(tmp_path, synthetic_test_split(1))
    status = main(["--model", str(tmp_path / "absent.keras"), str(paths[0])])
    output = capsys.readouterr()
    assert status == 1
    assert f"{tmp_path / 'absent.keras'}: model file not found" in output.err
    assert output.out == ""


def test_main_invalid_model_file(tmp_path, capsys):
    paths = write_pngs(tmp_path, synthetic_test_split(1))
    model = tmp_path / "model.keras"
    model.write_text("not a model")
    status = main(["--model", str(model), str(paths[0])])
    assert status == 1
    assert f"{model}: cannot load the model" in capsys.readouterr().err


def test_main_only_missing_paths(tmp_path, capsys):
    status = main(["--model", str(tmp_path / "absent.keras"), str(tmp_path / "absent.png")])
    output = capsys.readouterr()
    assert status == 1
    assert "absent.png: file or folder not found" in output.err
    assert "model file not found" not in output.err


@pytest.mark.parametrize("arguments", [[], ["--batch-size", "0", "a.png"], ["--unknown", "a.png"]])
def test_main_usage_error(arguments, capsys):
    with pytest.raises(SystemExit) as caught:
        main(arguments)
    assert caught.value.code == 2
    assert "usage: predict" in capsys.readouterr().err


def test_module_runs_as_command(tmp_path):
    paths = write_pngs(tmp_path, synthetic_test_split(1))
    completed = subprocess.run(
        [sys.executable, "-m", "ferplus.predict", "--model", "absent.keras", str(paths[0])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert completed.returncode == 1
    assert "predict: error: absent.keras: model file not found" in completed.stderr
