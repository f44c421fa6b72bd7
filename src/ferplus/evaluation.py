"""Predictions and metrics of a trained model on one split.

The metric functions are plain numpy on three aligned arrays:
- probabilities: (N, 8) predicted softmax probabilities over EMOTIONS;
- emotions_multi: (N, 8) vote distribution over EMOTIONS, rows summing to 1;
- votes: (N, 10) raw vote counts in VOTE_COLUMNS order.

The true emotion of an image is its majority emotion (the top of emotions_multi, ties going to
the emotion listed first), and the predicted emotion is the top of probabilities.
"""

import math
import os

import numpy as np
import pandas as pd

from ferplus import EMOTIONS
from ferplus.dataset import Dataset
from ferplus.fileio import atomic_path
from ferplus.votes import fer_plus_test_mask, majority_emotions

EMOTION_COUNT = len(EMOTIONS)

PROBABILITY_FLOOR = 1e-7
"""Probabilities are clipped to [PROBABILITY_FLOOR, 1] before the logarithm of cross-entropy."""

TIE_TOLERANCE = 1e-6
"""Vote shares closer than this count as tied in top_voted_accuracy."""


def predict_probabilities(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Return the model's (N, 8) float32 probabilities for raw (N, 48, 48, 1) images.

    The evaluate stage and the predict command both call this, so that they give identical
    predictions for the same pixels. Raises ValueError when the model's output is not (N, 8)
    or not finite.
    """
    if len(images) == 0:
        return np.zeros((0, EMOTION_COUNT), dtype=np.float32)
    probabilities = np.asarray(
        model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32
    )
    if probabilities.shape != (len(images), EMOTION_COUNT):
        raise ValueError(
            f"the model returned predictions of shape {probabilities.shape} for "
            f"{len(images)} images; expected ({len(images)}, {EMOTION_COUNT})"
        )
    not_finite = ~np.isfinite(probabilities).all(axis=1)
    if not_finite.any():
        raise ValueError(
            f"the model returned NaN or infinite probabilities for {int(not_finite.sum())} "
            f"images, the first at position {int(np.flatnonzero(not_finite)[0])}"
        )
    return probabilities


def predicted_emotions(probabilities: np.ndarray) -> np.ndarray:
    """Return the index of each row's most probable emotion."""
    return np.argmax(probabilities, axis=1)


def accuracy(probabilities: np.ndarray, emotions_multi: np.ndarray) -> float:
    """Return the share of images whose predicted emotion is their majority emotion."""
    return float(np.mean(predicted_emotions(probabilities) == majority_emotions(emotions_multi)))


def fer_plus_accuracy(probabilities: np.ndarray, votes: np.ndarray) -> tuple[float | None, int]:
    """Return (accuracy, size) on the FER+ paper's test subset of these images.

    The subset contains the images where one emotion has more than half of the votes once single
    votes are removed (votes.fer_plus_test_mask), and that emotion is the truth. It is also the
    top emotion of the raw votes, which is what this function compares against. The accuracy is
    None when the subset is empty.
    """
    mask = fer_plus_test_mask(votes)
    size = int(mask.sum())
    if size == 0:
        return None, 0
    truth = np.argmax(votes[mask, :EMOTION_COUNT], axis=1)
    return float(np.mean(predicted_emotions(probabilities[mask]) == truth)), size


def top_voted_accuracy(probabilities: np.ndarray, emotions_multi: np.ndarray) -> float:
    """Return the share of images whose predicted emotion is one of their top-voted emotions.

    Unlike accuracy, an image with tied top emotions counts as right for any of them.
    """
    predicted = predicted_emotions(probabilities)
    predicted_share = emotions_multi[np.arange(len(predicted)), predicted]
    return float(np.mean(predicted_share >= emotions_multi.max(axis=1) - TIE_TOLERANCE))


def top_k_accuracy(probabilities: np.ndarray, emotions_multi: np.ndarray, k: int) -> float:
    """Return the share of images whose majority emotion is among the k most probable ones."""
    top_k = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    truth = majority_emotions(emotions_multi)
    return float(np.mean((top_k == truth[:, None]).any(axis=1)))


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Return the (8, 8) int64 counts: row = actual emotion, column = predicted emotion."""
    pairs = actual.astype(np.int64) * EMOTION_COUNT + predicted.astype(np.int64)
    counts = np.bincount(pairs, minlength=EMOTION_COUNT * EMOTION_COUNT)
    return counts.reshape(EMOTION_COUNT, EMOTION_COUNT)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Divide elementwise, giving 0 where the denominator is 0."""
    result = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Return each emotion's recall from a confusion matrix; 0 for an emotion absent from truth."""
    return _safe_divide(np.diag(matrix), matrix.sum(axis=1))


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """Return each emotion's F1 = 2 TP / (2 TP + FP + FN) from a confusion matrix.

    An emotion that is never predicted but present has F1 0, and so has an emotion that is
    neither present in the truth nor predicted (its F1 would be 0/0).
    """
    true_positives = np.diag(matrix)
    false_positives = matrix.sum(axis=0) - true_positives
    false_negatives = matrix.sum(axis=1) - true_positives
    return _safe_divide(2 * true_positives, 2 * true_positives + false_positives + false_negatives)


def macro_f1(matrix: np.ndarray) -> float:
    """Return the mean F1 over the emotions that occur in the truth or in the predictions.

    An emotion absent from both has no errors to score, so it is left out of the mean rather than
    counted as 0; this is scikit-learn's f1_score(average="macro") without an explicit labels
    list. Returns 0 for an empty matrix.
    """
    occurring = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    if not occurring.any():
        return 0.0
    return float(per_class_f1(matrix)[occurring].mean())


def mean_cross_entropy(probabilities: np.ndarray, emotions_multi: np.ndarray) -> float:
    """Return the mean of -sum(emotions_multi x log(probabilities)) over the images.

    Probabilities are clipped to [PROBABILITY_FLOOR, 1], so one image contributes at most
    -log(1e-7), about 16.1, and the result is finite for finite inputs.
    """
    clipped = np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, 1.0)
    return float(np.mean(-(emotions_multi * np.log(clipped)).sum(axis=1)))


def compute_metrics(
    probabilities: np.ndarray, emotions_multi: np.ndarray, votes: np.ndarray
) -> dict:
    """Return every metric of one split as a JSON-ready dict of finite numbers.

    An empty split gives {"images": 0} alone. fer_plus_accuracy is absent when no image of the
    split belongs to the FER+ test subset, because it has no defined value then.
    """
    count = len(probabilities)
    if len(emotions_multi) != count or len(votes) != count:
        raise ValueError(
            f"the arrays disagree on the image count: {count} predictions, "
            f"{len(emotions_multi)} vote distributions, {len(votes)} vote rows"
        )
    if count == 0:
        return {"images": 0}

    matrix = confusion_matrix(majority_emotions(emotions_multi), predicted_emotions(probabilities))
    fer_plus_value, fer_plus_size = fer_plus_accuracy(probabilities, votes)
    metrics = {
        "images": count,
        "accuracy": accuracy(probabilities, emotions_multi),
        "fer_plus_images": fer_plus_size,
        "fer_plus_accuracy": fer_plus_value,
        "top_voted_accuracy": top_voted_accuracy(probabilities, emotions_multi),
        "top_2_accuracy": top_k_accuracy(probabilities, emotions_multi, k=2),
        "macro_f1": macro_f1(matrix),
        "cross_entropy": mean_cross_entropy(probabilities, emotions_multi),
        "f1": dict(zip(EMOTIONS, per_class_f1(matrix).tolist(), strict=True)),
        "recall": dict(zip(EMOTIONS, per_class_recall(matrix).tolist(), strict=True)),
    }
    if fer_plus_value is None:
        del metrics["fer_plus_accuracy"]
    _check_finite(metrics)
    return metrics


def _check_finite(metrics: dict, prefix: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            _check_finite(value, f"{prefix}{key}.")
        elif not math.isfinite(value):
            raise ValueError(f"metric {prefix}{key} is {value}; check the predictions for NaN")


def confusion_records(probabilities: np.ndarray, emotions_multi: np.ndarray) -> pd.DataFrame:
    """Return one row per image with its actual and predicted emotion names.

    This is the per-image table that DVC's confusion templates count.
    """
    names = np.array(EMOTIONS)
    return pd.DataFrame(
        {
            "actual": names[majority_emotions(emotions_multi)],
            "predicted": names[predicted_emotions(probabilities)],
        }
    )


def confident_mistakes(
    probabilities: np.ndarray, emotions_multi: np.ndarray, count: int
) -> np.ndarray:
    """Return the positions of up to `count` wrong predictions, most confident first.

    Confidence is the probability of the predicted emotion; equal confidences keep image order.
    """
    predicted = predicted_emotions(probabilities)
    wrong = np.flatnonzero(predicted != majority_emotions(emotions_multi))
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


def write_confusion_records(
    path: str | os.PathLike, probabilities: np.ndarray, emotions_multi: np.ndarray
) -> None:
    """Write the confusion records as a CSV file (columns actual, predicted) atomically."""
    with atomic_path(path) as temporary:
        confusion_records(probabilities, emotions_multi).to_csv(temporary, index=False)


def require_images(dataset: Dataset, directory: str | os.PathLike) -> None:
    """Raise ValueError when a split to evaluate on has no images."""
    if len(dataset) == 0:
        raise ValueError(
            f"{directory} has no images, so there is nothing to evaluate; "
            "check the split section of params.yaml and rerun the split stage"
        )
