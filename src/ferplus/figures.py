"""Evaluation figures: the confusion matrix and a grid of confident mistakes, as PNG files.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so no display or global
backend setting is involved.
"""

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ferplus import EMOTIONS
from ferplus.evaluation import confident_mistakes, confusion_matrix, predicted_emotions
from ferplus.fileio import atomic_path
from ferplus.votes import majority_emotions


def save_figure(path: str | os.PathLike, figure: Figure) -> None:
    """Write `figure` as a PNG file atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Divide each row by its sum; a row of zeros (an emotion absent from the truth) stays 0."""
    totals = matrix.sum(axis=1, keepdims=True)
    result = np.zeros(matrix.shape, dtype=np.float64)
    np.divide(matrix, totals, out=result, where=totals > 0)
    return result


def _draw_matrix(axes, values: np.ndarray, title: str, text_format: str) -> None:
    axes.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-12))
    positions = np.arange(len(EMOTIONS))
    axes.set_xticks(positions, labels=EMOTIONS, rotation=45, ha="right")
    axes.set_yticks(positions, labels=EMOTIONS)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title(title)
    threshold = values.max() / 2
    for row in positions:
        for column in positions:
            value = values[row, column]
            axes.text(
                column,
                row,
                format(value, text_format),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > threshold else "black",
            )


def confusion_figure(matrix: np.ndarray, title: str) -> Figure:
    """Draw an (8, 8) confusion matrix twice: counts, and rows normalized to sum to 1."""
    if matrix.shape != (len(EMOTIONS), len(EMOTIONS)):
        raise ValueError(f"expected an 8 x 8 confusion matrix, got shape {matrix.shape}")
    figure = Figure(figsize=(14, 6.5), layout="constrained")
    counts_axes, normalized_axes = figure.subplots(1, 2)
    _draw_matrix(counts_axes, matrix, "counts", "d")
    _draw_matrix(normalized_axes, row_normalized(matrix), "share of each actual emotion", ".2f")
    figure.suptitle(title)
    return figure


def mistakes_figure(
    images: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    rows: int,
    columns: int,
) -> Figure:
    """Draw up to rows x columns faces in a grid, each titled with its emotions and confidence.

    images are (N, 48, 48, 1) raw pixels; actual and predicted are emotion indices; confidence is
    the predicted emotion's probability. Cells past N stay blank, and with N = 0 the title reads
    that there are no mistakes.
    """
    figure = Figure(figsize=(1.9 * columns, 2.2 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for cell, axes in enumerate(grid):
        axes.set_axis_off()
        if cell >= len(images):
            continue
        axes.imshow(images[cell, :, :, 0], cmap="gray", vmin=0, vmax=255)
        axes.set_title(
            f"true {EMOTIONS[actual[cell]]}\n"
            f"predicted {EMOTIONS[predicted[cell]]}\n"
            f"confidence {confidence[cell]:.2f}",
            fontsize=8,
        )
    faces_shown = min(len(images), rows * columns)
    figure.suptitle(f"{faces_shown} most confident mistakes" if faces_shown else "no mistakes")
    return figure


def save_confusion_png(
    path: str | os.PathLike, probabilities: np.ndarray, emotions_multi: np.ndarray, title: str
) -> None:
    """Draw the confusion matrix of these predictions and write it as a PNG file atomically."""
    matrix = confusion_matrix(majority_emotions(emotions_multi), predicted_emotions(probabilities))
    save_figure(path, confusion_figure(matrix, title))


def save_mistakes_png(
    path: str | os.PathLike,
    images: np.ndarray,
    probabilities: np.ndarray,
    emotions_multi: np.ndarray,
    rows: int,
    columns: int,
) -> int:
    """Draw the most confident wrong predictions in a rows x columns grid and write the PNG.

    Returns how many faces the grid shows.
    """
    positions = confident_mistakes(probabilities, emotions_multi, rows * columns)
    predicted = predicted_emotions(probabilities)[positions]
    figure = mistakes_figure(
        images[positions],
        majority_emotions(emotions_multi)[positions],
        predicted,
        probabilities[positions, predicted],
        rows,
        columns,
    )
    save_figure(path, figure)
    return len(positions)
