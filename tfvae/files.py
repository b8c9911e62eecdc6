"""Writing files so that a reader never sees half of one: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    The temporary file keeps `path`'s suffix (Keras insists on `.keras`), lives in the same
    directory (so the rename is atomic on POSIX) and is removed if the block raises.

    Example:

    >>> with atomic_path("run/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    os.unlink(temporary)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """Writes `value` as indented JSON to `path` through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())
