"""Object detection data: scenes of digits with their boxes, offline.

`digit_scenes` pastes scikit-learn's bundled 8x8 digits at random,
non-overlapping places on a larger noisy canvas and returns each scene's
digits with their classes and boxes. `bundled_digits` gives the glyphs to
paste. The boxes are the tight boxes of each digit's ink, so that a
detector is scored on where the digit is, not on its blank margin.
"""

import numpy as np
from sklearn import datasets as sklearn_datasets

GLYPH_SIZE = 8
# Random places tried for each digit: a canvas filled by chance may have no
# free place left, and rejection sampling alone would never end.
PLACEMENT_TRIES = 100


def bundled_digits():
    """scikit-learn's bundled digits as glyphs in `[0, 1]`.

    Returns:
        `(glyphs, labels)`: float32 `(1797, 8, 8)` and int `(1797,)`.
    """
    bundled = sklearn_datasets.load_digits()
    return bundled.images.astype("float32") / 16.0, bundled.target


def digit_scenes(
    glyphs,
    labels,
    *,
    count,
    image_size=32,
    max_digits=3,
    noise=0.1,
    seed=0,
):
    """Scenes of 1 to `max_digits` digits, each with its class and box.

    Each scene draws its number of digits uniformly from `[1, max_digits]`
    and its glyphs from `glyphs`, and pastes each glyph's 8x8 window at a
    random place where it overlaps no other window (out of
    `PLACEMENT_TRIES` random places per digit, in all; digits that find no
    room are left out, which on small canvases makes fewer), on a canvas of
    Gaussian noise (standard deviation `noise`). A digit's box is the tight
    box of its ink (pixels above 0), end-exclusive, in pixels.

    Example:

    ```python
    glyphs, labels = bundled_digits()
    images, boxes, classes = digit_scenes(glyphs, labels, count=100)
    ```

    Args:
        glyphs: Float array `(n, 8, 8)`, the digits to paste.
        labels: Int array `(n,)`, their classes.
        count: Int > 0, the number of scenes.
        image_size: Int >= 16, the canvas side. Defaults to `32`.
        max_digits: Int >= 1, the most digits in a scene. Defaults to `3`.
        noise: Float >= 0, the background noise's standard deviation.
            Defaults to `0.1`.
        seed: Int, seed of the glyphs, places and noise. Defaults to `0`.

    Returns:
        `(images, boxes, classes)`: float32 `(count, image_size,
        image_size, 1)`; float32 `(count, max_digits, 4)` boxes as
        `(top, left, bottom, right)`, zero where a scene has fewer digits;
        int32 `(count, max_digits)` classes, -1 where there is no digit.
    """
    glyphs = np.asarray(glyphs, "float32")
    labels = np.asarray(labels)
    if glyphs.ndim != 3 or glyphs.shape[1:] != (GLYPH_SIZE, GLYPH_SIZE):
        raise ValueError(
            "Invalid value for argument `glyphs`. Expected an array of shape "
            f"(n, 8, 8). Received: glyphs.shape={glyphs.shape}"
        )
    if labels.shape != glyphs.shape[:1]:
        raise ValueError(
            "Invalid value for argument `labels`. Expected one label per "
            f"glyph, shape {glyphs.shape[:1]}. Received: "
            f"labels.shape={labels.shape}"
        )
    if not isinstance(count, int) or count <= 0:
        raise ValueError(
            "Invalid value for argument `count`. Expected an int > 0. "
            f"Received: count={count!r}"
        )
    if not isinstance(image_size, int) or image_size < 2 * GLYPH_SIZE:
        raise ValueError(
            "Invalid value for argument `image_size`. Expected an int >= 16. "
            f"Received: image_size={image_size!r}"
        )
    if not isinstance(max_digits, int) or max_digits < 1:
        raise ValueError(
            "Invalid value for argument `max_digits`. Expected an int >= 1. "
            f"Received: max_digits={max_digits!r}"
        )
    if not noise >= 0:
        raise ValueError(
            "Invalid value for argument `noise`. Expected a float >= 0. "
            f"Received: noise={noise!r}"
        )
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, noise, size=(count, image_size, image_size))
    boxes = np.zeros((count, max_digits, 4), "float32")
    classes = np.full((count, max_digits), -1, "int32")
    for scene in range(count):
        corners = _free_corners(
            rng, rng.integers(1, max_digits + 1), image_size
        )
        for slot, (top, left) in enumerate(corners):
            index = rng.integers(len(glyphs))
            glyph = glyphs[index]
            images[scene, top : top + 8, left : left + 8] += glyph
            rows = np.flatnonzero(glyph.max(axis=1) > 0)
            cols = np.flatnonzero(glyph.max(axis=0) > 0)
            boxes[scene, slot] = (
                top + rows[0],
                left + cols[0],
                top + rows[-1] + 1,
                left + cols[-1] + 1,
            )
            classes[scene, slot] = labels[index]
    return images[..., None].astype("float32"), boxes, classes


def _free_corners(rng, number, image_size):
    """Up to `number` top-left corners of 8x8 windows that do not overlap."""
    corners = []
    for _ in range(number * PLACEMENT_TRIES):
        if len(corners) == number:
            break
        top, left = rng.integers(0, image_size - GLYPH_SIZE + 1, size=2)
        if all(
            abs(top - other_top) >= GLYPH_SIZE
            or abs(left - other_left) >= GLYPH_SIZE
            for other_top, other_left in corners
        ):
            corners.append((int(top), int(left)))
    return corners
