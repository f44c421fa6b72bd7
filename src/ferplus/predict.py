"""The `predict` command: the emotion of each face image, from the model the pipeline trained.

    predict [--model models/model.keras] [--batch-size 256] [--json] [--recursive] PATH [PATH ...]

Each PATH is a PNG or JPEG file, or a folder whose .png, .jpg and .jpeg files are read in sorted
order (subfolders too with --recursive). Every image is prepared the way the training images are
(see `prepare_image`), the model runs on batches of --batch-size images, and each image gets one
line: its most likely emotion and the probabilities of all 8 emotions in EMOTIONS order, as a
table or, with --json, as one JSON object per line.

An image that is missing or cannot be read is reported on stderr with its path, and the others
are still processed. Exit status: 0 when every image was predicted, 1 when any image or the model
failed, 2 for invalid arguments.
"""

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ferplus import EMOTIONS, IMAGE_SIZE
from ferplus.evaluation import predict_probabilities

DEFAULT_MODEL = Path("models/model.keras")
DEFAULT_BATCH_SIZE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File name endings (any letter case) that a folder search collects."""

IMAGE_FORMATS = ("PNG", "JPEG")
"""Pillow format names that `read_image` accepts."""

RESAMPLING = Image.Resampling.BICUBIC
"""The filter that resizes images to 48x48.

Pillow widens the filter by the scale factor when it shrinks an image, so every pixel of a large
photo contributes and none is skipped. When a small crop is enlarged, bicubic interpolation
avoids the blocks of nearest-neighbour and rings less than Lanczos at sharp edges. Bicubic is
also the default of `Image.resize` in Pillow 13. FER2013 images are already 48x48 and are never
resampled.
"""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")
"""Pillow modes of 16-bit grayscale PNGs, and I (32-bit integers), which is scaled the same way.

Pillow's `convert("L")` clips these values to 255 instead of scaling them.
"""

PROBABILITY_DIGITS = 4
"""Decimal places of the probabilities in the table. --json writes them in full."""


class ImageError(ValueError):
    """An input path that gives no image: the message names the path and the problem."""


class ModelError(ValueError):
    """A model file that is missing or cannot be loaded: the message names the file."""


def find_images(paths: Sequence[Path], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Expand folders into their image files, keeping the order of `paths`.

    A file path is kept whatever its name ends with, so that reading it reports what it is. A
    folder contributes its files ending in IMAGE_SUFFIXES, sorted by path, and skips other files.
    Returns the image paths and one error message per missing path or empty folder.
    """
    images: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if not path.exists():
            errors.append(f"{path}: file or folder not found")
            continue
        if not path.is_dir():
            images.append(path)
            continue
        candidates = path.rglob("*") if recursive else path.iterdir()
        found = sorted(
            candidate
            for candidate in candidates
            if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file()
        )
        if not found:
            hint = "" if recursive else " (add --recursive to search its subfolders)"
            errors.append(f"{path}: folder contains no {', '.join(IMAGE_SUFFIXES)} files{hint}")
        images.extend(found)
    return images, errors


def prepare_image(image: Image.Image) -> np.ndarray:
    """Convert one Pillow image into the model input: (48, 48, 1) uint8 pixels, 0-255.

    - EXIF orientation is applied, so a rotated phone photo is upright.
    - 16-bit grayscale is scaled to 8 bits (value / 257, rounded), so 65535 becomes 255. Mode I
      (32-bit integers) is clipped to 0-65535 first.
    - Everything else goes through Pillow's convert("L"), as the training images do: colour
      becomes luma L = 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2), a palette is looked up first,
      and an alpha channel is dropped (transparent pixels keep their stored colour).
    - Any other size is resized to 48x48 with RESAMPLING. The aspect ratio is not kept, so
      the input should be a face crop like the FER2013 images: square and filled by the face.

    The pixels are not scaled to 0-1, because the model scales them itself.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        scaled = np.rint(np.clip(wide, 0, 65535) / 257).astype(np.uint8)
        gray = Image.fromarray(scaled)
    else:
        gray = image.convert("L")
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), resample=RESAMPLING)
    return np.asarray(gray, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 1)


def read_image(path: Path) -> np.ndarray:
    """Read one PNG or JPEG file as (48, 48, 1) uint8, raising ImageError naming the file."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            image.load()
            return prepare_image(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a PNG or JPEG image") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: image too large to decode ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow raises OSError for truncated or corrupt data and permission problems, and
        # SyntaxError or ValueError for some malformed headers and chunks.
        raise ImageError(f"{path}: unreadable image ({error})") from None


def load_model(path: Path):
    """Load a trained .keras model, raising ModelError when it is missing or invalid."""
    if not path.is_file():
        raise ModelError(
            f"{path}: model file not found; train one with `dvc repro` or pass --model FILE"
        )
    # ferplus.models imports TensorFlow, which takes seconds, so it is imported only when a
    # model is loaded: --help and argument errors return at once.
    from ferplus.models import load_trained_model

    try:
        return load_trained_model(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot load the model ({error})") from None


def format_table_header() -> str:
    """Return the column titles of the table output."""
    emotion_width = max(len(emotion) for emotion in EMOTIONS)
    columns = [f"{'emotion':<{emotion_width}}"]
    columns += [f"{emotion:>{_probability_width(emotion)}}" for emotion in EMOTIONS]
    columns.append("path")
    return "  ".join(columns)


def format_table_row(path: Path, probabilities: np.ndarray) -> str:
    """Return one table line: the top emotion, the 8 probabilities, then the path."""
    emotion_width = max(len(emotion) for emotion in EMOTIONS)
    columns = [f"{top_emotion(probabilities):<{emotion_width}}"]
    columns += [
        f"{value:>{_probability_width(emotion)}.{PROBABILITY_DIGITS}f}"
        for emotion, value in zip(EMOTIONS, probabilities, strict=True)
    ]
    columns.append(str(path))
    return "  ".join(columns)


def _probability_width(emotion: str) -> int:
    return max(len(emotion), PROBABILITY_DIGITS + 2)


def format_json_line(path: Path, probabilities: np.ndarray) -> str:
    """Return one JSON object: path, top emotion and {emotion: probability} in EMOTIONS order."""
    record = {
        "path": str(path),
        "emotion": top_emotion(probabilities),
        "probabilities": {
            emotion: float(value) for emotion, value in zip(EMOTIONS, probabilities, strict=True)
        },
    }
    return json.dumps(record)


def top_emotion(probabilities: np.ndarray) -> str:
    """Return the most likely emotion. A tie goes to the emotion listed first in EMOTIONS."""
    return EMOTIONS[int(np.argmax(probabilities))]


def positive_integer(text: str) -> int:
    """Parse an integer >= 1 for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of `predict`."""
    parser = argparse.ArgumentParser(
        prog="predict",
        description=(
            "Predict the facial expression of each image with a trained FER+ model. Images "
            "are converted to 8-bit grayscale and resized to 48x48 as in training."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="PNG or JPEG file, or folder of .png/.jpg/.jpeg files (read in sorted order)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help=f"trained Keras model file (default: {DEFAULT_MODEL}, relative to the current folder)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_integer,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per model call (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per image instead of a table",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also search the subfolders of folder arguments",
    )
    return parser


def predict_files(
    model, paths: Sequence[Path], batch_size: int
) -> Iterator[tuple[Path, np.ndarray | ImageError]]:
    """Yield (path, probabilities) for each image, in the order of `paths`.

    Images are read and predicted `batch_size` at a time. A file that cannot be read yields
    (path, ImageError) in its place, and the other files are still predicted.
    """
    for start in range(0, len(paths), batch_size):
        results: list[np.ndarray | ImageError] = []
        for path in paths[start : start + batch_size]:
            try:
                results.append(read_image(path))
            except ImageError as error:
                results.append(error)
        images = [result for result in results if isinstance(result, np.ndarray)]
        if images:
            predicted = iter(predict_probabilities(model, np.stack(images), batch_size))
            results = [
                result if isinstance(result, ImageError) else next(predicted) for result in results
            ]
        yield from zip(paths[start : start + batch_size], results, strict=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `predict` command and return its exit status."""
    arguments = build_parser().parse_args(argv)
    image_paths, errors = find_images(arguments.paths, arguments.recursive)
    for message in errors:
        print(f"predict: error: {message}", file=sys.stderr)
    failures = len(errors)
    if not image_paths:
        return 1

    try:
        model = load_model(arguments.model)
    except ModelError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 1

    printed_header = False
    try:
        for path, result in predict_files(model, image_paths, arguments.batch_size):
            if isinstance(result, ImageError):
                print(f"predict: error: {result}", file=sys.stderr)
                failures += 1
            elif arguments.json:
                print(format_json_line(path, result), flush=True)
            else:
                if not printed_header:
                    print(format_table_header())
                    printed_header = True
                print(format_table_row(path, result), flush=True)
    except ValueError as error:
        # predict_probabilities rejects output that is not (N, 8) or not finite.
        print(f"predict: error: {arguments.model}: {error}", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
