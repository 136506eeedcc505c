"""Domain shifts of image batches, as pure numpy functions.

Each takes a float array of images `(batch, height, width, channels)` in
`[0, 1]` and returns a new array of the same shape and dtype, in `[0, 1]`:
the new domains of the forgetting benchmark.
"""

import numpy as np


def translate(images, *, pixels=3):
    """Moves the content right and down by `pixels`, filling with zeros.

    Args:
        images: Float array `(batch, height, width, channels)`.
        pixels: Int >= 0, the shift along both axes. Defaults to `3`.
    """
    _check_images(images)
    if not isinstance(pixels, int) or pixels < 0:
        raise ValueError(
            "Invalid value for argument `pixels`. Expected an int >= 0. "
            f"Received: pixels={pixels!r}"
        )
    shifted = np.zeros_like(images)
    height, width = images.shape[1:3]
    shifted[:, pixels:, pixels:] = images[
        :, : max(height - pixels, 0), : max(width - pixels, 0)
    ]
    return shifted


def rotate(images):
    """Rotates each image by 90 degrees counter-clockwise."""
    _check_images(images)
    return np.rot90(images, k=1, axes=(1, 2)).copy()


def invert(images):
    """`1 - image`: dark strokes on a light background."""
    _check_images(images)
    return (1.0 - images).astype(images.dtype)


def add_noise(images, *, stddev=0.5, seed=0):
    """Adds seeded Gaussian noise of `stddev`, clipped back to `[0, 1]`.

    Args:
        images: Float array `(batch, height, width, channels)`.
        stddev: Float >= 0, the noise's standard deviation. Defaults to
            `0.5`.
        seed: Int, seeds the noise (the same seed, the same images).
            Defaults to `0`.
    """
    _check_images(images)
    noise = np.random.default_rng(seed).normal(0.0, stddev, images.shape)
    return np.clip(images + noise, 0.0, 1.0).astype(images.dtype)


def brighten(images):
    """`0.5 + 0.5 * image`: a bright background at half the contrast."""
    _check_images(images)
    return (0.5 + 0.5 * images).astype(images.dtype)


def _check_images(images):
    """Raises `ValueError` unless `images` is a 4-D numpy array."""
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError(
            "Invalid value for argument `images`. Expected a numpy array of "
            "shape (batch, height, width, channels). Received: images with "
            f"shape {getattr(images, 'shape', None)}"
        )
