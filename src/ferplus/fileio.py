"""Atomic output writing: every file appears whole under its final name, or not at all."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`, then rename it to `path` if the block succeeds.

    Works for files and for directories. On an exception the temporary is removed and any
    previous `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    # mkdtemp reserves a unique name; a file output needs the name free.
    temporary.rmdir()
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(temporary, final)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        elif temporary.exists():
            temporary.unlink()


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one .npy file atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.save(stream, array, allow_pickle=False)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Read one .npy file, never unpickling objects."""
    return np.load(path, allow_pickle=False)


def save_json(path: str | os.PathLike, data: dict) -> None:
    """Write a JSON file atomically, indented, with a trailing newline."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
