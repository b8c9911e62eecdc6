"""Corrupt and unreadable data: a `DataError` naming the file, one line and exit 2 from the CLI."""

from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
from conftest import run_main
from PIL import Image

from tfvae.cli import main
from tfvae.data import DataError, load, translate_pipeline_errors
from tfvae.data.idx import read_idx


def write_idx_gz(path, images: np.ndarray) -> None:
    content = bytes([0, 0, 0x08, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape)
    path.write_bytes(gzip.compress(content + images.astype(np.uint8).tobytes()))


def write_png(path, value: int, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def assert_one_error_line(status, err, *fragments):
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("tfvae: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------- IDX, .npz and .npy files
@pytest.mark.parametrize("offset", [20, 60, -6])
def test_idx_gz_with_a_flipped_byte_names_the_file(tmp_path, offset):
    # Inside the deflate data a flip is a zlib.error or a bad CRC; in the trailer, a bad CRC.
    path = tmp_path / "flipped-images-idx3-ubyte.gz"
    write_idx_gz(path, np.random.default_rng(0).integers(0, 256, (30, 8, 8)))
    content = bytearray(path.read_bytes())
    content[offset] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=rf"gzip stream is corrupt or truncated.*{path.name}|{path.name}.*gzip stream is corrupt"):
        read_idx(path)
    with pytest.raises(DataError, match=path.name):
        load(str(path))


def write_npz(path) -> None:
    rng = np.random.default_rng(1)
    np.savez_compressed(path, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
                        y_train=np.arange(40) % 10)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
def test_damaged_npz_names_the_file(tmp_path, damage):
    path = tmp_path / "data.npz"
    write_npz(path)
    content = bytearray(path.read_bytes())
    if damage == "truncated":
        content = content[: len(content) // 2]
    elif damage == "flipped":
        content[len(content) // 3] ^= 0xFF  # inside the compressed x_train: a bad CRC or zlib error
    else:
        content = b""
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=r"complete NumPy \.npz archive. Received: '.*data\.npz'.*truncated or corrupt"):
        load(str(path))


@pytest.mark.parametrize(
    "content",
    [
        lambda good: good[: len(good) - 100],        # cut: fewer values than the header says
        lambda good: b"\x93NUMPY\x01\x00garbage!" + good[20:],   # a mangled header
        lambda good: b"not a numpy file at all",     # read as a pickle, which is refused
    ],
)
def test_corrupt_npy_names_the_file(tmp_path, content):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((10, 8, 8), np.float32))
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(DataError, match=r"complete NumPy \.npy file. Received: '.*images\.npy'"):
        load(str(path))


def test_cli_reports_a_corrupt_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "data.npz"
    write_npz(path)
    path.write_bytes(path.read_bytes()[:300])
    run_dir = tmp_path / "run"
    status, _, err = run_main(capsys, "train", "--dataset", path, "--run-dir", run_dir, "--quiet")
    assert_one_error_line(status, err, str(path), "truncated or corrupt")
    assert not run_dir.exists()


# ---------------------------------------------------------------- --cache
def test_cache_under_a_missing_folder_is_refused_before_anything_runs(tmp_path, capsys):
    cache = tmp_path / "no" / "such" / "cache"
    with pytest.raises(FileNotFoundError, match=r"folder '.*no/such' does not exist"):
        load("digits", cache=str(cache))
    run_dir = tmp_path / "run"
    status, _, err = run_main(capsys, "train", "--cache", cache, "--run-dir", run_dir, "--quiet")
    assert_one_error_line(status, err, str(cache.parent), "does not exist")
    assert not run_dir.exists()


def test_cache_in_a_read_only_folder_is_refused(read_only_dir):
    with pytest.raises(DataError, match="is not writable"):
        load("digits", cache=str(read_only_dir / "cache"))


def test_cache_prefix_in_an_existing_folder_is_written(tmp_path):
    splits = load("digits", batch_size=256, cache=str(tmp_path / "digits"))
    assert sum(len(batch) for batch in splits.train) == splits.num_train
    assert any(name.startswith("digits-train") for name in os.listdir(tmp_path))


def test_cache_prefix_that_is_a_file_inside_a_file_is_refused(tmp_path):
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        load("digits", cache=str(tmp_path / "plain-file" / "cache"))


# ---------------------------------------------------------------- images found unreadable late
def image_folder(tmp_path, bad: dict[str, bytes], count: int = 8):
    """`count` 8x8 PNGs 0.png, 1.png, ... whose files named in `bad` are replaced by those bytes."""
    folder = tmp_path / "images"
    for index in range(count):
        write_png(folder / f"{index}.png", index * 20)
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    return folder


def truncated_png(tmp_path) -> bytes:
    write_png(tmp_path / "whole.png", 100)
    return (tmp_path / "whole.png").read_bytes()[:45]  # the header is whole, the pixels are not


@pytest.mark.parametrize("bad_name", ["3.png", "7.png"])  # one in the middle, the last one
@pytest.mark.parametrize("resize", [True, False])
def test_unreadable_image_found_while_iterating_names_the_file(tmp_path, bad_name, resize):
    # With a resize only the first file's header is read up front; without, every header is,
    # so the bad file here is a truncated PNG whose header is fine.
    folder = image_folder(tmp_path, {bad_name: b"not a png" if resize else truncated_png(tmp_path)})
    splits = load(str(folder), batch_size=2, image_size=(4, 4) if resize else None,
                  validation_fraction=0.25, cache="none")
    with pytest.raises(DataError) as raised, translate_pipeline_errors():
        for dataset in (splits.train, splits.validation):
            for _ in dataset:
                pass
    message = str(raised.value)
    assert message.startswith("Expected a readable PNG or JPEG image. Received: '")
    assert f"{folder / bad_name}'" in message and "\n" not in message


def test_image_folder_path_with_quotes_and_non_ascii_is_named_exactly(tmp_path):
    folder = image_folder(tmp_path, {})
    odd = folder / "café 'quoted'.png"
    odd.write_bytes(b"broken")
    splits = load(str(folder), batch_size=4, image_size=(4, 4), cache="none")
    with pytest.raises(DataError, match="Received: '(.*)'") as raised, translate_pipeline_errors():
        list(splits.train)
        list(splits.validation)
    assert f"'{odd}'" in str(raised.value)


def test_good_image_folder_keeps_every_image_once(tmp_path):
    folder = image_folder(tmp_path, {})
    splits = load(str(folder), batch_size=3, validation_fraction=0.25, cache="none")
    values = np.concatenate([batch.numpy() for split in (splits.train, splits.validation)
                             for batch in split])
    assert values.shape == (8, 8, 8, 1)
    assert sorted(np.round(values.mean(axis=(1, 2, 3)) * 255).astype(int)) == [
        index * 20 for index in range(8)
    ]


def test_cli_train_reports_an_image_found_unreadable_during_fit(tmp_path, capsys):
    folder = image_folder(tmp_path, {"5.png": b"not a png"})
    status, _, err = run_main(
        capsys, "train", "--dataset", folder, "--image-size", "8", "--epochs", "1",
        "--batch-size", "4", "--filters", "4", "--latent-dim", "2", "--run-dir",
        tmp_path / "run", "--quiet",
    )
    assert_one_error_line(status, err, f"'{folder / '5.png'}'", "cannot be read or decoded")


@pytest.fixture(scope="module")
def image_folder_run(tmp_path_factory):
    """A one-epoch run on a folder of twelve 8x8 PNGs: `(run_dir, folder)`."""
    root = tmp_path_factory.mktemp("image-run")
    folder = image_folder(root, {}, count=12)
    run_dir = root / "run"
    status = main(["train", "--dataset", str(folder), "--epochs", "1", "--batch-size", "4",
                   "--filters", "4", "--latent-dim", "2", "--validation-fraction", "0.25",
                   "--run-dir", str(run_dir), "--quiet"])
    assert status == 0
    return run_dir, folder


def test_evaluate_names_the_local_source(image_folder_run, capsys):
    run_dir, folder = image_folder_run
    status, out, err = run_main(capsys, "evaluate", run_dir, "--samples", "2", "--json")
    assert status == 0, err
    assert json.loads(out)["source"] == f"local folder '{folder}'"


def test_cli_evaluate_reports_an_unreadable_image(image_folder_run, tmp_path, capsys):
    run_dir, _ = image_folder_run
    # Every file cut after its header: evaluate reads only the held-out quarter.
    broken = image_folder(tmp_path, {f"{i}.png": truncated_png(tmp_path) for i in range(12)},
                          count=12)
    status, _, err = run_main(capsys, "evaluate", run_dir, "--dataset", broken,
                              "--samples", "2", "--json")
    assert_one_error_line(status, err, str(broken), "cannot be read or decoded")
