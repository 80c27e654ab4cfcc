"""Host rendering helpers (avjax.images): spectrogram images, frame grids, frame scaling."""

import jax.numpy as jnp
import numpy as np
import pytest

from avjax import images


def test_mel_pair_puts_low_frequencies_at_the_bottom():
    top = np.full((4, 3), -1.0, np.float32)
    top[0] = 1.0  # the lowest mel bin, loud
    bottom = np.zeros((4, 3), np.float32)
    pair = images.mel_pair(top, bottom)
    assert pair.shape == (8, 3) and pair.dtype == np.float32
    np.testing.assert_array_equal(pair[3], 1.0)  # row 0 of `top` drawn last of its half
    np.testing.assert_array_equal(pair[:3], 0.0)
    np.testing.assert_array_equal(pair[4:], 0.5)


def test_frame_grid_layout_and_borders():
    clips = np.ones((2, 3, 5, 4, 6, 1), np.float32)  # R=2, C=3, T=5, H=4, W=6, grey
    grid = images.frame_grid(clips, n_past=2, pad=2)
    assert grid.shape == (5, 2 * 6 + 2, 3 * 8 + 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[0, 0, 0], [0, 153, 0])  # seen: green border
    np.testing.assert_array_equal(grid[4, 0, 0], [204, 0, 0])  # predicted: red border
    np.testing.assert_array_equal(grid[:, 2:6, 2:8], 255)  # clip (0, 0) inside its border


def test_frames01_scales():
    f = np.zeros((1, 2, 2, 2, 1), np.uint8)
    f[0, 0, 1, 1, 0] = 40
    np.testing.assert_allclose(images.frames01(jnp.asarray(f), "255")[0, 0, 1, 1, 0], 40 / 255)
    per = np.asarray(images.frames01(jnp.asarray(f), "per_frame_max"))
    assert per[0, 0, 1, 1, 0] == 1.0 and (per[0, 1] == 0).all()  # black frame stays 0
    with pytest.raises(ValueError, match="frame_scale"):
        images.frames01(jnp.asarray(f), "max")
