"""ingest: raw FER+ files (params ingest.raw_dir) -> data/prepared/.

Writes images.npy (N,48,48,1) uint8, emotions_multi.npy (N,8) float32, emotions_single.npy
(N,8) float32, index.csv (source, image name, Usage and 10 raw votes per image) and report.json.
The folder is built under a temporary name and renamed, so a failed run leaves no partial output.
"""

import logging

from ferplus.dataset import save_dataset
from ferplus.fileio import atomic_path, save_json
from ferplus.ingest import INGEST_SETTINGS, ingest
from ferplus.params import load_section
from ferplus.stage import run_stage

OUTPUT_DIR = "data/prepared"

logger = logging.getLogger("ingest")


def main() -> None:
    params = load_section("ingest", INGEST_SETTINGS)
    dataset, report = ingest(**params)
    logger.info(
        "kept %d of %d images (%s); images %s, emotions_multi %s",
        report["images_kept"],
        report["images_read"],
        ", ".join(f"{reason} {count}" for reason, count in report["dropped"].items())
        or "none dropped",
        dataset.images.shape,
        dataset.emotions_multi.shape,
    )
    for usage, counts in report["per_usage"].items():
        logger.info("%s: read %d, kept %d", usage, counts["read"], counts["kept"])
    with atomic_path(OUTPUT_DIR) as temporary:
        save_dataset(temporary, dataset)
        save_json(temporary / "report.json", report)
    logger.info("wrote %s", OUTPUT_DIR)


if __name__ == "__main__":
    run_stage("ingest", main)
