"""Reading MNIST-format IDX files (gzipped or raw) into NumPy arrays."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from tfvae.data.errors import DataError

# IDX type codes (third byte of the magic number) and the big-endian dtypes they name.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the format of the MNIST distribution files), gzipped or raw.

    The header is two zero bytes, a type code (0x08 unsigned byte ... 0x0E float64), the number
    of dimensions D, then D big-endian 32-bit sizes; the body holds exactly the product of the
    sizes values.

    Args:
        path: the file; gzip compression is recognized from its first bytes, not its name.

    Returns:
        The array, shape `[d1, ..., dD]`, in native byte order (uint8 for MNIST).

    Raises:
        FileNotFoundError: `path` does not exist.
        DataError: (a ValueError) an unreadable file, a corrupt or truncated gzip stream, a
            wrong magic number, or a body shorter or longer than the header says.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise DataError(
            f"Expected a readable IDX file. Received: '{path}', which cannot be read "
            f"({error.strerror or error})."
        ) from None
    if content[:2] == _GZIP_MAGIC:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as error:
            # A flipped byte shows as zlib.error (bad deflate data) or BadGzipFile (CRC).
            raise DataError(
                f"Expected a complete gzip-compressed IDX file. Received: '{path}', whose gzip "
                f"stream is corrupt or truncated ({error})."
            ) from None
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _IDX_DTYPES:
        received = content[:4].hex() if len(content) >= 4 else f"only {len(content)} bytes"
        raise DataError(
            "Expected an IDX file whose magic number is two zero bytes, a type code in "
            "0x08..0x0E and the number of dimensions (0x00000803 for MNIST images, 0x00000801 "
            f"for labels). Received: 0x{received} in '{path}'."
        )
    dtype = _IDX_DTYPES[content[2]]
    num_dims = content[3]
    header_size = 4 + 4 * num_dims
    if num_dims == 0 or len(content) < header_size:
        raise DataError(
            f"Expected an IDX header with {num_dims} dimension sizes ({header_size} bytes). "
            f"Received: {len(content)} bytes in '{path}'; the file is truncated."
        )
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", num_dims, offset=4))
    expected_bytes = int(np.prod(shape)) * dtype.itemsize
    body_bytes = len(content) - header_size
    if body_bytes != expected_bytes:
        state = "truncated" if body_bytes < expected_bytes else "longer than its header says"
        raise DataError(
            f"Expected {expected_bytes} bytes of data after the IDX header of shape {shape}. "
            f"Received: {body_bytes} bytes in '{path}'; the file is {state}."
        )
    array = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def matching_labels_file(images_path: str | os.PathLike) -> Path | None:
    """The labels file beside an IDX images file, by MNIST's naming, if it exists.

    `t10k-images-idx3-ubyte.gz` pairs with `t10k-labels-idx1-ubyte.gz` (and the same for raw
    files, or `train-images.idx3-ubyte` with `train-labels.idx1-ubyte`).
    """
    images_path = Path(images_path)
    name = images_path.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images_path.name:
        return None
    stem = name.removesuffix(".gz")
    for candidate in (stem, stem + ".gz"):
        labels_path = images_path.with_name(candidate)
        if labels_path.is_file():
            return labels_path
    return None


def is_idx_images_name(path: Path) -> bool:
    """Whether a file name follows MNIST's naming for an IDX images file."""
    return "idx3" in path.name
