"""Image grids: tiles in the right places, gaps, upscaling, errors."""

import numpy as np
import pytest
import tensorflow as tf

from tfvae.images import image_grid, interleave_pairs, save_png


def test_tiles_are_placed_row_by_row_with_gray_gaps():
    images = np.stack([np.full((2, 3, 1), value) for value in (0.0, 0.25, 1.0)])
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
    assert (grid[1:3, 1:4] == 0).all() and (grid[1:3, 5:8] == 64).all()
    assert (grid[4:6, 1:4] == 255).all()
    assert (grid[4:6, 5:8] == 128).all()  # the empty fourth cell is gap-coloured
    assert (grid[0] == 128).all() and (grid[:, 4] == 128).all()


def test_upscaling_clipping_and_default_columns():
    images = np.random.default_rng(0).uniform(-1, 2, size=(5, 2, 2, 3))
    grid = image_grid(images, scale=3, padding=2)
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 2, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    np.testing.assert_array_equal(grid[2:8, 2:8], np.repeat(np.repeat(
        np.round(np.clip(images[0], 0, 1) * 255).astype(np.uint8), 3, axis=0), 3, axis=1))


@pytest.mark.parametrize("shape", [(0, 4, 4, 1), (4, 4, 1), (2, 4, 4, 2)])
def test_bad_batches(shape):
    with pytest.raises(ValueError, match=r"Expected a non-empty batch of images \[N, H, W, C\]"):
        image_grid(np.zeros(shape))


def test_pairs_and_png_round_trip(tmp_path):
    originals = np.zeros((2, 2, 2, 1))
    reconstructions = np.ones((2, 2, 2, 1))
    pairs = interleave_pairs(originals, reconstructions)
    assert [float(p.mean()) for p in pairs] == [0.0, 1.0, 0.0, 1.0]
    grid = image_grid(pairs, columns=2)
    save_png(tmp_path / "g.png", grid)
    np.testing.assert_array_equal(tf.io.decode_png((tmp_path / "g.png").read_bytes()).numpy(), grid)
