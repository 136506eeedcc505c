"""The benchmark's image shifts, on a hand-made 4x4 image."""

import numpy as np
import pytest

from benchmarks.experiments import image_shifts

# One image, one channel: a vertical stroke in column 1, a dot at (0, 3).
_IMAGE = np.array(
    [
        [0.0, 1.0, 0.0, 0.5],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
    ],
    "float32",
)[np.newaxis, :, :, np.newaxis]


def test_translate_moves_right_and_down_with_zero_fill():
    shifted = image_shifts.translate(_IMAGE, pixels=1)[0, :, :, 0]
    expected = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ]
    )
    np.testing.assert_array_equal(shifted, expected)


def test_translate_past_the_image_leaves_zeros():
    np.testing.assert_array_equal(
        image_shifts.translate(_IMAGE, pixels=5), np.zeros_like(_IMAGE)
    )


def test_rotate_is_a_quarter_turn_counter_clockwise():
    rotated = image_shifts.rotate(_IMAGE)[0, :, :, 0]
    # The top row becomes the left column, read bottom to top.
    np.testing.assert_array_equal(rotated[:, 0], [0.5, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(rotated[2], [1.0, 1.0, 1.0, 1.0])


def test_invert_and_brighten():
    np.testing.assert_allclose(image_shifts.invert(_IMAGE), 1.0 - _IMAGE)
    np.testing.assert_allclose(
        image_shifts.brighten(_IMAGE)[0, 0, :, 0], [0.5, 1.0, 0.5, 0.75]
    )


def test_noise_is_seeded_and_clipped():
    first = image_shifts.add_noise(_IMAGE, stddev=0.5, seed=3)
    again = image_shifts.add_noise(_IMAGE, stddev=0.5, seed=3)
    other = image_shifts.add_noise(_IMAGE, stddev=0.5, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert first.dtype == np.float32
    expected = np.clip(
        _IMAGE + np.random.default_rng(3).normal(0.0, 0.5, _IMAGE.shape), 0, 1
    )
    np.testing.assert_allclose(first, expected, rtol=1e-6)


@pytest.mark.parametrize("images", [_IMAGE[0], [[0.0]]])
def test_shifts_refuse_anything_but_a_batch_of_images(images):
    with pytest.raises(
        ValueError, match="Invalid value for argument `images`. Expected"
    ):
        image_shifts.invert(images)


def test_translate_refuses_negative_pixels():
    with pytest.raises(
        ValueError,
        match=r"Expected an int >= 0. Received: pixels=-1",
    ):
        image_shifts.translate(_IMAGE, pixels=-1)
