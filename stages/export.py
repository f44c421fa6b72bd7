"""Export stage: models/model.keras -> models/export/saved_model/ and models/export/model.tflite.

The SavedModel and the TensorFlow Lite file both take float32 raw pixels (N, 48, 48, 1), 0-255,
and return (N, 8) probabilities over EMOTIONS. Before they replace models/export, both must
reproduce the Keras model within export.tolerance on random images drawn from base.seed.
"""

import logging
from pathlib import Path

from ferplus.export import TFLITE_FILE, export_model, make_check_images
from ferplus.models import load_trained_model
from ferplus.params import Setting, load_section, load_seed
from ferplus.stage import run_stage

MODEL_PATH = "models/model.keras"
EXPORT_DIR = Path("models/export")

SETTINGS = {
    "tolerance": Setting(float, minimum=0.0, exclusive_minimum=True),
}

logger = logging.getLogger("export")


def main() -> None:
    params = load_section("export", SETTINGS)
    seed = load_seed()

    model = load_trained_model(MODEL_PATH)
    logger.info("loaded %s: input %s, output %s", MODEL_PATH, model.input_shape, model.output_shape)

    check_images = make_check_images(seed)
    differences = export_model(model, EXPORT_DIR, check_images, params["tolerance"])
    for name, difference in differences.items():
        logger.info(
            "%s: probabilities differ from the Keras model by up to %.3g on %d check images",
            name,
            difference,
            len(check_images),
        )
    tflite_size = (EXPORT_DIR / TFLITE_FILE).stat().st_size
    logger.info("wrote %s (%s: %d bytes)", EXPORT_DIR, TFLITE_FILE, tflite_size)


if __name__ == "__main__":
    run_stage("export", main)
