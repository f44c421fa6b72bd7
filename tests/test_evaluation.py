"""Tests of the evaluation metrics, figures and the evaluate stage, on hand-computed cases."""

import json
import math
import runpy
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from ferplus import EMOTIONS, VOTE_COLUMNS
from ferplus.dataset import Dataset, save_dataset
from ferplus.evaluation import (
    accuracy,
    compute_metrics,
    confident_mistakes,
    confusion_matrix,
    confusion_records,
    fer_plus_accuracy,
    macro_f1,
    mean_cross_entropy,
    per_class_f1,
    per_class_recall,
    predict_probabilities,
    top_k_accuracy,
    top_voted_accuracy,
    write_confusion_records,
)
from ferplus.figures import confusion_figure, mistakes_figure, save_confusion_png

REPOSITORY = Path(__file__).resolve().parents[1]


def emotion_rows(*rows: dict) -> np.ndarray:
    """Build (N, 8) float arrays from {emotion name: value} rows; missing emotions are 0."""
    array = np.zeros((len(rows), len(EMOTIONS)), dtype=np.float32)
    for position, row in enumerate(rows):
        for name, value in row.items():
            array[position, EMOTIONS.index(name)] = value
    return array


def vote_rows(*rows: dict) -> np.ndarray:
    """Build (N, 10) vote counts from {vote column: count} rows."""
    array = np.zeros((len(rows), len(VOTE_COLUMNS)), dtype=np.int64)
    for position, row in enumerate(rows):
        for name, count in row.items():
            array[position, VOTE_COLUMNS.index(name)] = count
    return array


# Four images, worked out by hand:
# 0: truth neutral, predicted neutral (right).
# 1: truth happiness (0.6 vs neutral 0.4), predicted neutral; happiness is second most probable.
# 2: neutral and surprise tie at 0.5, so the truth is neutral, the emotion listed first. The
#    prediction, surprise, is one of the top-voted emotions. Neutral is second most probable.
# 3: truth sadness, predicted happiness; sadness is only fourth most probable.
PROBABILITIES = emotion_rows(
    {"neutral": 0.7, "happiness": 0.2, "surprise": 0.1},
    {"neutral": 0.6, "happiness": 0.3, "surprise": 0.1},
    {"neutral": 0.15, "happiness": 0.05, "surprise": 0.8},
    {"neutral": 0.2, "happiness": 0.5, "surprise": 0.2, "sadness": 0.1},
)
EMOTIONS_MULTI = emotion_rows(
    {"neutral": 1.0},
    {"neutral": 0.4, "happiness": 0.6},
    {"neutral": 0.5, "surprise": 0.5},
    {"sadness": 1.0},
)
# FER+ test subset: image 0 (10 of 10), image 1 (6 of 10) and image 3, where sadness has 5 of 10
# raw votes but all of the 5 left once the five single votes are removed. Image 2 (5 of 10) is out.
VOTES = vote_rows(
    {"neutral": 10},
    {"neutral": 4, "happiness": 6},
    {"neutral": 5, "surprise": 5},
    {"sadness": 5, "anger": 1, "disgust": 1, "fear": 1, "happiness": 1, "NF": 1},
)


def test_accuracy_hand_computed():
    assert accuracy(PROBABILITIES, EMOTIONS_MULTI) == pytest.approx(1 / 4)


def test_fer_plus_accuracy_hand_computed():
    value, size = fer_plus_accuracy(PROBABILITIES, VOTES)
    assert size == 3
    assert value == pytest.approx(1 / 3)


def test_fer_plus_accuracy_empty_subset():
    value, size = fer_plus_accuracy(PROBABILITIES[2:3], VOTES[2:3])
    assert size == 0
    assert value is None


def test_top_voted_accuracy_counts_ties():
    assert top_voted_accuracy(PROBABILITIES, EMOTIONS_MULTI) == pytest.approx(2 / 4)


def test_top_2_accuracy_hand_computed():
    assert top_k_accuracy(PROBABILITIES, EMOTIONS_MULTI, k=2) == pytest.approx(3 / 4)


def test_top_1_equals_accuracy():
    assert top_k_accuracy(PROBABILITIES, EMOTIONS_MULTI, k=1) == pytest.approx(1 / 4)


def test_confusion_matrix_cells():
    matrix = confusion_matrix(np.array([0, 1, 0, 3]), np.array([0, 0, 2, 1]))
    expected = np.zeros((8, 8), dtype=np.int64)
    expected[0, 0] = 1
    expected[1, 0] = 1
    expected[0, 2] = 1
    expected[3, 1] = 1
    assert matrix.shape == (8, 8)
    assert matrix.tolist() == expected.tolist()


def test_per_class_f1_hand_computed():
    matrix = confusion_matrix(np.array([0, 1, 0, 3]), np.array([0, 0, 2, 1]))
    # neutral: TP 1, FP 1, FN 1 -> 2 / 4. Happiness, surprise and sadness have no TP. Sadness is
    # never predicted, and the four absent emotions are 0/0: all give 0, not NaN.
    assert per_class_f1(matrix).tolist() == [0.5, 0, 0, 0, 0, 0, 0, 0]


def test_per_class_recall_hand_computed():
    matrix = confusion_matrix(np.array([0, 1, 0, 3]), np.array([0, 0, 2, 1]))
    # Surprise is predicted but absent from the truth: its recall is 0 by convention.
    assert per_class_recall(matrix).tolist() == [0.5, 0, 0, 0, 0, 0, 0, 0]


def test_macro_f1_skips_absent_emotions():
    actual = np.array([0, 1, 0, 3])
    predicted = np.array([0, 0, 2, 1])
    # Mean over neutral, happiness, surprise and sadness: (0.5 + 0 + 0 + 0) / 4.
    assert macro_f1(confusion_matrix(actual, predicted)) == pytest.approx(0.125)
    assert macro_f1(confusion_matrix(actual, predicted)) == pytest.approx(
        f1_score(actual, predicted, average="macro", zero_division=0)
    )


def test_macro_f1_empty_matrix():
    assert macro_f1(np.zeros((8, 8), dtype=np.int64)) == 0.0


def test_cross_entropy_hand_computed():
    expected = (
        -math.log(0.7)
        - (0.4 * math.log(0.6) + 0.6 * math.log(0.3))
        - (0.5 * math.log(0.15) + 0.5 * math.log(0.8))
        - math.log(0.1)
    ) / 4
    assert mean_cross_entropy(PROBABILITIES, EMOTIONS_MULTI) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_clips_zero():
    probabilities = emotion_rows({"happiness": 1.0})
    truth = emotion_rows({"neutral": 1.0})
    assert mean_cross_entropy(probabilities, truth) == pytest.approx(-math.log(1e-7))


def test_compute_metrics_values():
    metrics = compute_metrics(PROBABILITIES, EMOTIONS_MULTI, VOTES)
    assert metrics["images"] == 4
    assert metrics["accuracy"] == pytest.approx(0.25)
    assert metrics["fer_plus_images"] == 3
    assert metrics["fer_plus_accuracy"] == pytest.approx(1 / 3)
    assert metrics["top_voted_accuracy"] == pytest.approx(0.5)
    assert metrics["top_2_accuracy"] == pytest.approx(0.75)
    assert metrics["macro_f1"] == pytest.approx(0.125)
    assert list(metrics["f1"]) == list(EMOTIONS)
    assert metrics["f1"]["neutral"] == pytest.approx(0.5)
    assert metrics["f1"]["sadness"] == 0.0
    assert metrics["recall"]["neutral"] == pytest.approx(0.5)
    assert metrics["recall"]["contempt"] == 0.0


def test_compute_metrics_json_numbers_only():
    metrics = compute_metrics(PROBABILITIES, EMOTIONS_MULTI, VOTES)
    text = json.dumps(metrics, allow_nan=False)
    assert json.loads(text) == metrics


def test_compute_metrics_without_fer_plus_subset():
    metrics = compute_metrics(PROBABILITIES[2:3], EMOTIONS_MULTI[2:3], VOTES[2:3])
    assert metrics["fer_plus_images"] == 0
    assert "fer_plus_accuracy" not in metrics


def test_compute_metrics_empty_split():
    empty = np.zeros((0, 8), dtype=np.float32)
    assert compute_metrics(empty, empty, np.zeros((0, 10), dtype=np.int64)) == {"images": 0}


def test_compute_metrics_length_mismatch_raises():
    with pytest.raises(ValueError, match="4 predictions, 3 vote distributions"):
        compute_metrics(PROBABILITIES, EMOTIONS_MULTI[:3], VOTES)


def test_confident_mistakes_order():
    # Mistakes are images 1 (neutral, 0.6), 2 (surprise, 0.8) and 3 (happiness, 0.5).
    assert confident_mistakes(PROBABILITIES, EMOTIONS_MULTI, 5).tolist() == [2, 1, 3]
    assert confident_mistakes(PROBABILITIES, EMOTIONS_MULTI, 2).tolist() == [2, 1]


def test_confusion_records_names(tmp_path):
    path = tmp_path / "metrics" / "confusion.csv"
    write_confusion_records(path, PROBABILITIES, EMOTIONS_MULTI)
    records = pd.read_csv(path)
    assert list(records.columns) == ["actual", "predicted"]
    assert records["actual"].tolist() == ["neutral", "happiness", "neutral", "sadness"]
    assert records["predicted"].tolist() == ["neutral", "neutral", "surprise", "happiness"]


def test_confusion_figure_always_8x8():
    # Only neutral and happiness occur, yet both panels show all 8 emotions.
    probabilities = emotion_rows({"neutral": 0.9, "happiness": 0.1}, {"happiness": 1.0})
    truth = emotion_rows({"neutral": 1.0}, {"neutral": 1.0})
    records = confusion_records(probabilities, truth)
    matrix = confusion_matrix(
        np.array([EMOTIONS.index(name) for name in records["actual"]]),
        np.array([EMOTIONS.index(name) for name in records["predicted"]]),
    )
    figure = confusion_figure(matrix, "two classes")
    assert len(figure.axes) == 2
    for axes in figure.axes:
        assert axes.images[0].get_array().shape == (8, 8)
        assert [label.get_text() for label in axes.get_xticklabels()] == list(EMOTIONS)
        assert [label.get_text() for label in axes.get_yticklabels()] == list(EMOTIONS)
    normalized = figure.axes[1].images[0].get_array()
    assert normalized[0, 0] == pytest.approx(0.5)
    assert normalized[0, 1] == pytest.approx(0.5)
    assert normalized[1].tolist() == [0.0] * 8


def test_confusion_png_written(tmp_path):
    path = tmp_path / "confusion.png"
    save_confusion_png(path, PROBABILITIES, EMOTIONS_MULTI, "test")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1400, 650)
    assert [entry.name for entry in tmp_path.iterdir()] == ["confusion.png"]


def test_mistakes_figure_grid_size():
    images = np.zeros((3, 48, 48, 1), dtype=np.uint8)
    figure = mistakes_figure(
        images, np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0.9, 0.8, 0.7]), 2, 4
    )
    assert len(figure.axes) == 8
    assert sum(len(axes.images) for axes in figure.axes) == 3
    assert figure.get_suptitle() == "3 most confident mistakes"
    assert figure.axes[0].get_title() == "true neutral\npredicted happiness\nconfidence 0.90"


def test_mistakes_figure_without_mistakes():
    empty = np.zeros(0, dtype=np.int64)
    figure = mistakes_figure(
        np.zeros((0, 48, 48, 1), dtype=np.uint8), empty, empty, np.zeros(0), 1, 2
    )
    assert figure.get_suptitle() == "no mistakes"
    assert sum(len(axes.images) for axes in figure.axes) == 0


def brightness_model() -> keras.Model:
    """Build a model that predicts emotion k for an image whose mean pixel is 30 k.

    The logit of emotion i is 10 i m - 5 i^2 = 5 m^2 - 5 (i - m)^2 for m = mean pixel / 30, so
    the nearest i wins with probability about 0.987 when m is a whole number.
    """
    model = keras.Sequential(
        [
            keras.Input((48, 48, 1)),
            keras.layers.Rescaling(1 / 30),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(EMOTIONS), activation="softmax"),
        ]
    )
    emotion_numbers = np.arange(len(EMOTIONS), dtype=np.float32)
    model.layers[-1].set_weights([10 * emotion_numbers[None, :], -5 * emotion_numbers**2])
    return model


def constant_images(predicted: list[int]) -> np.ndarray:
    values = np.array(predicted, dtype=np.uint8) * 30
    return np.broadcast_to(values[:, None, None, None], (len(values), 48, 48, 1)).copy()


def test_predict_probabilities_brightness_model():
    probabilities = predict_probabilities(brightness_model(), constant_images([0, 3, 7]), 2)
    assert probabilities.shape == (3, 8)
    assert probabilities.dtype == np.float32
    assert np.argmax(probabilities, axis=1).tolist() == [0, 3, 7]
    assert probabilities.sum(axis=1) == pytest.approx([1, 1, 1], rel=1e-5)


def test_predict_probabilities_empty_images():
    empty = np.zeros((0, 48, 48, 1), dtype=np.uint8)
    assert predict_probabilities(brightness_model(), empty, 4).shape == (0, 8)


def test_predict_probabilities_wrong_output_raises():
    model = keras.Sequential(
        [keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    with pytest.raises(ValueError, match=r"shape \(2, 3\) for 2 images"):
        predict_probabilities(model, constant_images([0, 1]), 4)


def make_split(predicted: list[int], truth: list[int]) -> Dataset:
    """Build a split whose images the brightness model predicts as `predicted`.

    Every image has 10 votes for its true emotion, so all of them are in the FER+ test subset.
    """
    count = len(truth)
    truth = np.array(truth, dtype=np.int64)
    votes = np.zeros((count, len(VOTE_COLUMNS)), dtype=np.int64)
    votes[np.arange(count), truth] = 10
    one_hot = np.eye(len(EMOTIONS), dtype=np.float32)[truth]
    index = pd.DataFrame(
        {
            "source": "hand-made",
            "image_name": [f"image{position}.png" for position in range(count)],
            "usage": "PrivateTest",
        }
    )
    for column, name in enumerate(VOTE_COLUMNS):
        index[name] = votes[:, column]
    return Dataset(constant_images(predicted), one_hot, one_hot.copy(), index)


def write_project(root: Path, test: Dataset, val: Dataset) -> None:
    save_dataset(root / "data" / "split" / "test", test)
    save_dataset(root / "data" / "split" / "val", val)
    (root / "models").mkdir()
    brightness_model().save(root / "models" / "model.keras")
    (root / "params.yaml").write_text(
        "evaluate:\n  batch_size: 4\n  mistakes_rows: 2\n  mistakes_columns: 3\n"
    )


def read_strict_json(path: Path) -> dict:
    """Read JSON, raising ValueError on NaN or Infinity, which are not JSON numbers."""

    def reject(constant: str) -> float:
        raise ValueError(f"{path} contains {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def run_evaluate_stage() -> None:
    runpy.run_path(str(REPOSITORY / "stages" / "evaluate.py"), run_name="__main__")


def test_evaluate_stage_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    test = make_split(predicted=[0, 1, 2, 3, 4, 5], truth=[0, 1, 2, 3, 0, 1])
    val = make_split(predicted=[6, 7], truth=[6, 6])
    write_project(tmp_path, test, val)

    run_evaluate_stage()

    metrics = read_strict_json(tmp_path / "metrics" / "evaluate.json")
    assert metrics["test"]["images"] == 6
    assert metrics["test"]["accuracy"] == pytest.approx(4 / 6)
    assert metrics["test"]["fer_plus_images"] == 6
    assert metrics["test"]["fer_plus_accuracy"] == pytest.approx(4 / 6)
    assert metrics["val"]["images"] == 2
    assert metrics["val"]["accuracy"] == pytest.approx(0.5)
    records = pd.read_csv(tmp_path / "metrics" / "confusion_test.csv")
    assert records["actual"].tolist() == [EMOTIONS[i] for i in (0, 1, 2, 3, 0, 1)]
    assert records["predicted"].tolist() == [EMOTIONS[i] for i in range(6)]
    for name in ("confusion_test.png", "mistakes_test.png"):
        with Image.open(tmp_path / "metrics" / name) as image:
            assert image.format == "PNG", name
    assert sorted(path.name for path in (tmp_path / "metrics").iterdir()) == [
        "confusion_test.csv",
        "confusion_test.png",
        "evaluate.json",
        "mistakes_test.png",
    ]


def test_evaluate_stage_empty_test_fails(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, make_split([], []), make_split([0], [0]))
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate_stage()
    assert exit_info.value.code == 1
    assert "data/split/test has no images" in caplog.text
    assert not (tmp_path / "metrics").exists()


def test_evaluate_stage_empty_val(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, make_split([0, 1], [0, 0]), make_split([], []))
    run_evaluate_stage()
    metrics = read_strict_json(tmp_path / "metrics" / "evaluate.json")
    assert metrics["val"] == {"images": 0}
    assert metrics["test"]["accuracy"] == pytest.approx(0.5)
