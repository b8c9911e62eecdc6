"""Writing files so that a reader never sees half of one: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _naming(error: OSError, path: Path, temporary) -> OSError:
    """`error` with `path` as its file name, so that the message says which file failed.

    Writes through a file object (and HDF5, zip) raise OSErrors without a file name; a full
    disk then reads "[Errno 28] No space left on device" with no hint of where. An error naming
    the temporary file (removed by then) names `path` instead.
    """
    if error.errno is None or error.filename not in (None, str(temporary)):
        return error
    return type(error)(error.errno, os.strerror(error.errno), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    The temporary file keeps `path`'s suffix (Keras insists on `.keras`), lives in the same
    directory (so the rename is atomic on POSIX) and is removed if the block raises, so a full
    disk leaves the previous `path` intact and no partial file behind.

    Example:

    >>> with atomic_path("run/model.keras") as tmp:  # doctest: +SKIP
    ...     model.save(tmp)

    Raises:
        OSError: from the block or the rename; one without a file name (e.g. ENOSPC from a
            write) is raised again naming `path`.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(handle)
        os.unlink(temporary)
        temporary = Path(temporary)
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        named = _naming(error, path, temporary)
        if named is error:
            raise
        raise named from error
    finally:
        if temporary is not None and temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename.

    Raises:
        OSError: e.g. no space left on device, naming `path`; `path` is then unchanged.
    """
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, value) -> None:
    """Writes `value` as indented JSON to `path` through a temporary file and a rename."""
    write_bytes_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

