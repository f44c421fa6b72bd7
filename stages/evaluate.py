"""Evaluate stage: models/model.keras + data/split/{val,test} -> metrics/evaluate.json and plots.

Writes metrics/evaluate.json (the metrics of val and test), metrics/confusion_test.csv (one row
per test image: actual and predicted emotion, for DVC's confusion plots), and two PNG files:
metrics/confusion_test.png and metrics/mistakes_test.png.
"""

import logging

from ferplus.dataset import load_dataset
from ferplus.evaluation import (
    compute_metrics,
    predict_probabilities,
    require_images,
    write_confusion_records,
)
from ferplus.figures import save_confusion_png, save_mistakes_png
from ferplus.fileio import save_json
from ferplus.models import load_trained_model
from ferplus.params import Setting, load_section
from ferplus.stage import run_stage

MODEL_PATH = "models/model.keras"
SPLIT_DIRS = {"val": "data/split/val", "test": "data/split/test"}
METRICS_PATH = "metrics/evaluate.json"
CONFUSION_RECORDS_PATH = "metrics/confusion_test.csv"
CONFUSION_PNG_PATH = "metrics/confusion_test.png"
MISTAKES_PNG_PATH = "metrics/mistakes_test.png"

SETTINGS = {
    "batch_size": Setting(int, minimum=1),
    "mistakes_rows": Setting(int, minimum=1),
    "mistakes_columns": Setting(int, minimum=1),
}

logger = logging.getLogger("evaluate")


def main() -> None:
    params = load_section("evaluate", SETTINGS)

    splits = {name: load_dataset(directory) for name, directory in SPLIT_DIRS.items()}
    require_images(splits["test"], SPLIT_DIRS["test"])
    if len(splits["val"]) == 0:
        logger.warning("%s has no images; its metrics hold the image count only", SPLIT_DIRS["val"])

    model = load_trained_model(MODEL_PATH)
    metrics = {}
    probabilities = {}
    for name, dataset in splits.items():
        probabilities[name] = predict_probabilities(model, dataset.images, params["batch_size"])
        metrics[name] = compute_metrics(probabilities[name], dataset.emotions_multi, dataset.votes)
        summary = {
            key: value for key, value in metrics[name].items() if key not in ("f1", "recall")
        }
        logger.info("%s metrics: %s", name, summary)

    test = splits["test"]
    save_json(METRICS_PATH, metrics)
    write_confusion_records(CONFUSION_RECORDS_PATH, probabilities["test"], test.emotions_multi)
    save_confusion_png(
        CONFUSION_PNG_PATH, probabilities["test"], test.emotions_multi, "test confusion matrix"
    )
    mistakes_shown = save_mistakes_png(
        MISTAKES_PNG_PATH,
        test.images,
        probabilities["test"],
        test.emotions_multi,
        params["mistakes_rows"],
        params["mistakes_columns"],
    )
    logger.info("wrote %s, %s, %s", METRICS_PATH, CONFUSION_RECORDS_PATH, CONFUSION_PNG_PATH)
    logger.info("wrote %s with %d mistakes", MISTAKES_PNG_PATH, mistakes_shown)


if __name__ == "__main__":
    run_stage("evaluate", main)
