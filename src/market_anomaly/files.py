"""Files other processes read while they change (parameters, model, alert episodes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then rename it over ``path``: a reader (or a
    crash mid-write) sees the old file or the new one, never half of one. ``durable``: the file's bytes, then the
    rename, are on disk when this returns (fsync), for what a crash of the machine must not take back."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
