"""Readers for the raw FER+ files, in both layouts, with errors that name the file and the row.

Kaggle layout: fer2013.csv (columns emotion, pixels, Usage) and Microsoft's fer2013new.csv
(Usage, Image name, then 10 vote counts). FER+ folder layout: FER2013Train/, FER2013Valid/ and
FER2013Test/, each with a header-less label.csv (image name, optional face box, 10 vote counts)
and the 48x48 PNG files it names.
"""

import csv
import io
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ferplus import IMAGE_SIZE, USAGES, VOTE_COLUMNS

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE

KAGGLE_COLUMNS = ("emotion", "pixels", "Usage")
LABEL_FILE_COLUMNS = ("Usage", "Image name") + VOTE_COLUMNS

# FER+ folder names and the FER2013 Usage each one holds.
FOLDER_USAGES = {
    "FER2013Train": "Training",
    "FER2013Valid": "PublicTest",
    "FER2013Test": "PrivateTest",
}

# Bytes of fer2013.csv parsed at a time: large enough to amortise Python overhead, small enough
# for the working arrays to stay in the CPU caches.
CSV_BLOCK_BYTES = 2 << 20


class RawDataError(ValueError):
    """Invalid raw input; the message names the file, the row or image, and the problem."""


@dataclass
class VoteRows:
    """The rows of a FER+ label file: one entry per row, in file order."""

    usages: list[str]
    image_names: list[str]
    votes: np.ndarray  # (N, 10) int64 in VOTE_COLUMNS order
    line_numbers: list[int]  # 1-based line of each row in its file


def _parse_votes(path: Path, line_number: int, cells: list[str]) -> list[int]:
    votes = []
    for column, cell in zip(VOTE_COLUMNS, cells, strict=True):
        text = cell.strip()
        if not text.isdigit():
            raise RawDataError(
                f"{path}, line {line_number}: {column} vote count is {cell!r}, "
                "expected a non-negative integer"
            )
        votes.append(int(text))
    return votes


def _read_header(path: Path, reader, expected: tuple[str, ...]) -> dict[str, int]:
    try:
        header = next(reader)
    except StopIteration:
        raise RawDataError(f"{path}: file is empty, expected a header row") from None
    positions = {name.strip().strip('"'): position for position, name in enumerate(header)}
    missing = [name for name in expected if name not in positions]
    if missing:
        raise RawDataError(
            f"{path}, line 1: missing column {missing[0]!r}; found columns "
            f"{', '.join(repr(name) for name in positions)}"
        )
    return positions


def _require_kaggle_file(path: Path) -> None:
    """Raise RawDataError when one of the Kaggle layout's two files is missing."""
    if not path.is_file():
        raise RawDataError(
            f"{path}: file not found; the Kaggle layout needs fer2013.csv and fer2013new.csv "
            "side by side"
        )


def read_fer2013new(path: str | os.PathLike) -> VoteRows:
    """Read Microsoft's fer2013new.csv: Usage, image name and 10 vote counts per row.

    Column names may carry spaces around them. Rows keep their file order, which is the order of
    fer2013.csv: the two files pair rows by position.
    """
    path = Path(path)
    _require_kaggle_file(path)
    rows = VoteRows(usages=[], image_names=[], votes=np.zeros((0, 10), np.int64), line_numbers=[])
    vote_lists = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        positions = _read_header(path, reader, LABEL_FILE_COLUMNS)
        usage_position = positions["Usage"]
        name_position = positions["Image name"]
        vote_positions = [positions[name] for name in VOTE_COLUMNS]
        width = max(positions.values()) + 1
        for line_number, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) < width:
                raise RawDataError(
                    f"{path}, line {line_number}: expected {width} columns, got {len(cells)}"
                )
            usage = cells[usage_position].strip()
            if usage not in USAGES:
                raise RawDataError(
                    f"{path}, line {line_number}: unknown Usage {usage!r}, "
                    f"expected one of {', '.join(USAGES)}"
                )
            rows.usages.append(usage)
            rows.image_names.append(cells[name_position].strip())
            rows.line_numbers.append(line_number)
            vote_lists.append(
                _parse_votes(path, line_number, [cells[position] for position in vote_positions])
            )
    if not vote_lists:
        raise RawDataError(f"{path}: no data rows after the header")
    rows.votes = np.array(vote_lists, dtype=np.int64)
    return rows


def read_folder_labels(folder: str | os.PathLike, usage: str) -> VoteRows:
    """Read the header-less label.csv of one FER+ image folder.

    Each row: image name, an optional face box such as "(0, 0, 48, 48)", then 10 vote counts.
    """
    path = Path(folder) / "label.csv"
    if not path.is_file():
        raise RawDataError(f"{path}: file not found; each FER+ image folder needs its label.csv")
    rows = VoteRows(usages=[], image_names=[], votes=np.zeros((0, 10), np.int64), line_numbers=[])
    vote_lists = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for line_number, cells in enumerate(csv.reader(stream), start=1):
            if not cells:
                continue
            if len(cells) not in (11, 12):
                raise RawDataError(
                    f"{path}, line {line_number}: expected 11 or 12 columns (image name, "
                    f"optional face box, 10 vote counts), got {len(cells)}"
                )
            rows.usages.append(usage)
            rows.image_names.append(cells[0].strip())
            rows.line_numbers.append(line_number)
            vote_lists.append(_parse_votes(path, line_number, cells[-10:]))
    if not vote_lists:
        raise RawDataError(f"{path}: file is empty, expected one row per image")
    rows.votes = np.array(vote_lists, dtype=np.int64)
    return rows


# --- fer2013.csv ---------------------------------------------------------------------------------


@dataclass
class KaggleRows:
    """The rows of a Kaggle fer2013.csv, in file order."""

    usages: list[str]
    images: np.ndarray  # (N, 48, 48, 1) uint8
    line_numbers: list[int]


def _pixel_problem(field: bytes) -> str | None:
    """Describe what is wrong with one pixels field, or return None when it is valid."""
    if not field:
        return f"pixels is empty, expected {PIXELS_PER_IMAGE} values"
    values = field.split(b" ")
    if len(values) != PIXELS_PER_IMAGE:
        return f"pixels has {len(values)} values, expected {PIXELS_PER_IMAGE}"
    for position, value in enumerate(values, start=1):
        if not value.isdigit() or len(value) > 3 or int(value) > 255:
            text = value.decode("utf-8", errors="replace")
            return f"pixel {position} is {text!r}, expected an integer from 0 to 255"
    return None


# Prepended to each block of joined pixel fields: a dummy value "000" that the parser drops. With
# it, the third byte before the end of every real value is inside the buffer.
_BLOCK_PREFIX = b"000 "


def _parse_pixel_block(joined: bytes, field_lengths: np.ndarray) -> np.ndarray | None:
    """Parse pixel fields joined as _BLOCK_PREFIX + b" ".join(fields) + b" ".

    Returns (rows, 2304) uint8, or None when any field is malformed, so that the caller can find
    and name the bad row with the slow per-row check. Parsing whole blocks with NumPy avoids
    calling int() 82 million times, which is what makes row-by-row parsing slow.
    """
    codes = np.frombuffer(joined, dtype=np.uint8)
    is_space = codes == ord(" ")
    spaces = np.flatnonzero(is_space)
    digit_count = np.count_nonzero((codes - np.uint8(ord("0"))) < 10)
    if digit_count + len(spaces) != len(codes):
        return None  # a byte that is neither a digit nor a space
    value_lengths = np.diff(spaces) - 1
    if value_lengths.min(initial=1) < 1 or value_lengths.max(initial=1) > 3:
        return None
    # Each field must hold exactly 2304 values: count the spaces up to the one that ends it.
    field_ends = np.cumsum(field_lengths + 1) + (len(_BLOCK_PREFIX) - 1)
    values_per_field = np.diff(np.searchsorted(spaces, field_ends, side="right"), prepend=1)
    if np.any(values_per_field != PIXELS_PER_IMAGE):
        return None

    # For a digit, the low 4 bits of its byte are its value, and for a space they are 0, so a
    # 1-digit value gets no stray tens digit. Only 3-digit values take the hundreds digit.
    digits = codes & np.uint8(0x0F)
    hundreds_at = spaces[1:] - 3
    values = digits[2:][hundreds_at].astype(np.uint16)
    values += digits[1:][hundreds_at] * np.uint16(10)
    values += digits[hundreds_at] * np.uint16(100) * (value_lengths == 3)
    if values.max(initial=0) > 255:
        return None
    return values.astype(np.uint8).reshape(-1, PIXELS_PER_IMAGE)


def _iter_line_blocks(path: Path):
    """Yield (number of the first line, lines) for consecutive blocks of whole lines."""
    with open(path, "rb") as stream:
        leftover = b""
        line_number = 1
        while chunk := stream.read(CSV_BLOCK_BYTES):
            block = leftover + chunk
            end = block.rfind(b"\n")
            if end < 0:
                leftover = block
                continue
            leftover = block[end + 1 :]
            lines = block[:end].split(b"\n")
            yield line_number, lines
            line_number += len(lines)
        if leftover:
            yield line_number, [leftover]


def _field_bounds(line: bytes, width: int) -> list[int] | None:
    """Return the comma positions that split `line` into `width` fields, or None if too few."""
    bounds = [-1]
    position = -1
    for _ in range(width - 1):
        position = line.find(b",", position + 1)
        if position < 0:
            return None
        bounds.append(position)
    bounds.append(len(line))
    return bounds


_USAGE_CODES = {usage.encode(): usage for usage in USAGES}


def _split_kaggle_lines(
    path: Path, lines: list[bytes], first_line: int, positions: dict[str, int]
) -> tuple[list[memoryview], list[str], list[int]]:
    """Split one block of fer2013.csv data lines into pixel fields, usages and line numbers.

    Checks the column count, the emotion and the Usage of each line and skips blank lines.
    _parse_pixel_fields checks the pixels.
    """
    width = max(positions.values()) + 1
    emotion_column, pixels_column = positions["emotion"], positions["pixels"]
    usage_column = positions["Usage"]
    pixel_fields = []
    usages = []
    line_numbers = []
    for offset, line in enumerate(lines):
        line = line.rstrip(b"\r")
        if not line:
            continue
        line_number = first_line + offset
        bounds = _field_bounds(line, width)
        if bounds is None:
            raise RawDataError(
                f"{path}, line {line_number}: expected {width} columns, "
                f"got {line.count(b',') + 1}"
            )
        emotion = line[bounds[emotion_column] + 1 : bounds[emotion_column + 1]].strip(b' "')
        if not emotion.isdigit():
            raise RawDataError(
                f"{path}, line {line_number}: emotion is "
                f"{emotion.decode('utf-8', errors='replace')!r}, expected an integer"
            )
        usage_field = line[bounds[usage_column] + 1 : bounds[usage_column + 1]]
        usage = _USAGE_CODES.get(usage_field.strip(b' "'))
        if usage is None:
            raise RawDataError(
                f"{path}, line {line_number}: unknown Usage "
                f"{usage_field.decode('utf-8', errors='replace')!r}, "
                f"expected one of {', '.join(USAGES)}"
            )
        start, end = bounds[pixels_column] + 1, bounds[pixels_column + 1]
        while start < end and line[start] in b' "':
            start += 1
        while end > start and line[end - 1] in b' "':
            end -= 1
        # A memoryview slice costs no copy of the 8 KB field.
        pixel_fields.append(memoryview(line)[start:end])
        usages.append(usage)
        line_numbers.append(line_number)
    return pixel_fields, usages, line_numbers


def _parse_pixel_fields(
    path: Path, pixel_fields: list[memoryview], line_numbers: list[int]
) -> np.ndarray:
    """Parse one block's pixel fields into (rows, 2304) uint8, naming the first bad line."""
    field_lengths = np.array([len(field) for field in pixel_fields], dtype=np.int64)
    joined = _BLOCK_PREFIX + b" ".join(pixel_fields) + b" "
    pixels = _parse_pixel_block(joined, field_lengths)
    if pixels is None:
        for line_number, field in zip(line_numbers, pixel_fields, strict=True):
            problem = _pixel_problem(bytes(field))
            if problem:
                raise RawDataError(f"{path}, line {line_number}: {problem}")
        raise RawDataError(  # unreachable unless the two parsers disagree
            f"{path}, lines {line_numbers[0]}-{line_numbers[-1]}: invalid pixels"
        )
    return pixels


def read_kaggle_csv(path: str | os.PathLike) -> KaggleRows:
    """Read Kaggle's fer2013.csv: one 48x48 image per row, pixels as 2304 space-separated values.

    Column names may carry spaces around them and fields may be quoted. Rows keep their file
    order. A malformed row raises RawDataError naming the line and the problem.

    The main thread splits each block of lines into fields while a worker thread parses the
    previous block's pixels with NumPy, which releases the GIL, so the two overlap.
    """
    path = Path(path)
    _require_kaggle_file(path)
    usages: list[str] = []
    line_numbers: list[int] = []
    blocks: list[np.ndarray] = []
    pending: deque[Future] = deque()
    positions = None
    with ThreadPoolExecutor(max_workers=1) as executor:
        try:
            for first_line, lines in _iter_line_blocks(path):
                if positions is None:
                    reader = csv.reader([lines[0].decode("utf-8-sig").strip()])
                    positions = _read_header(path, reader, KAGGLE_COLUMNS)
                    lines = lines[1:]
                    first_line += 1
                pixel_fields, block_usages, block_line_numbers = _split_kaggle_lines(
                    path, lines, first_line, positions
                )
                usages.extend(block_usages)
                line_numbers.extend(block_line_numbers)
                if pixel_fields:
                    pending.append(
                        executor.submit(_parse_pixel_fields, path, pixel_fields, block_line_numbers)
                    )
                # At most two blocks wait, so memory stays bounded.
                while len(pending) > 2:
                    blocks.append(pending.popleft().result())
        except RawDataError:
            # A bad row in an earlier block, found by the worker, comes first in file order.
            for future in pending:
                future.result()
            raise
        blocks.extend(future.result() for future in pending)
    if positions is None:
        raise RawDataError(f"{path}: file is empty, expected a header row")
    if not blocks:
        raise RawDataError(f"{path}: no data rows after the header")
    images = np.concatenate(blocks).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)
    return KaggleRows(usages=usages, images=images, line_numbers=line_numbers)


# --- PNG images ----------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR of a 48x48, 8-bit, grayscale, non-interlaced PNG: the format of every FER+ image.
_FAST_IHDR = struct.pack(">IIBBBBB", IMAGE_SIZE, IMAGE_SIZE, 8, 0, 0, 0, 0)
_ROW_BYTES = IMAGE_SIZE + 1  # a filter-type byte, then one byte per pixel


def _read_file(path: Path) -> bytes | None:
    # os.read on a raw descriptor is about 3x faster than open().read() for 35,000 tiny files,
    # and threads only add lock contention here.
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        parts = []
        while part := os.read(descriptor, 1 << 16):
            parts.append(part)
        return b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(descriptor)


def _compressed_pixels(data: bytes) -> bytes | None:
    """Return the zlib stream of a 48x48 8-bit grayscale non-interlaced PNG, else None."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or data[16:29] != _FAST_IHDR:
        return None
    position = 8
    compressed = []
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IDAT":
            compressed.append(data[position + 8 : position + 8 + length])
        elif kind == b"IEND":
            break
        position += 12 + length
    return b"".join(compressed)


def _decode_png(path: Path, data: bytes | None) -> np.ndarray:
    if data is None:
        if not path.exists():
            raise RawDataError(f"{path}: image file not found (named in label.csv)")
        raise RawDataError(f"{path}: image file could not be read")
    compressed = _compressed_pixels(data)
    try:
        if compressed is not None:
            # Pillow's own zlib and PNG-filter decoder, without the per-file chunk parsing of
            # Image.open: about 4x faster for the FER+ images.
            image = Image.frombytes("L", (IMAGE_SIZE, IMAGE_SIZE), compressed, "zip", "L")
            return np.asarray(image, dtype=np.uint8)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            gray = image.convert("L") if image.mode != "L" else image
            pixels = np.asarray(gray, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RawDataError(f"{path}: unreadable image ({error})") from None
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise RawDataError(
            f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} pixels, "
            f"expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return pixels


def read_pngs(paths: list[Path]) -> np.ndarray:
    """Read 48x48 grayscale images into (N, 48, 48) uint8.

    Other image formats and colour PNGs are converted to 8-bit grayscale by Pillow. A missing,
    unreadable or non-48x48 file raises RawDataError naming it.
    """
    images = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for position, path in enumerate(paths):
        images[position] = _decode_png(path, _read_file(path))
    return images


def write_kaggle_csv(
    path: str | os.PathLike, images: np.ndarray, usages: list[str], emotions: list[int]
) -> None:
    """Write images in Kaggle's fer2013.csv format (emotion, pixels, Usage), e.g. for tests.

    images: (N, 48, 48) or (N, 48, 48, 1) uint8; emotions: Kaggle's 0-6 class per image.
    """
    flat = np.asarray(images, dtype=np.uint8).reshape(len(images), PIXELS_PER_IMAGE)
    with open(path, "w", newline="") as stream:
        stream.write("emotion,pixels,Usage\n")
        for pixels, usage, emotion in zip(flat, usages, emotions, strict=True):
            stream.write(f"{emotion},{' '.join(map(str, pixels.tolist()))},{usage}\n")
