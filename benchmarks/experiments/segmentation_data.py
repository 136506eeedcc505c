"""Semantic segmentation data: digit scenes offline, and TFDS sets.

Two sources of `(image, mask)` pairs, where `mask` holds one class index
per pixel:

- `digit_scenes`: scikit-learn's bundled 8x8 digits, each drawn at a random
  place on a larger noisy canvas, with a per-pixel mask (class 0 for the
  background, `1 + digit` on the digit's strokes). Offline and fast: the
  `examples.segmentation` default.
- `tfds_segmentation`: a TensorFlow Datasets segmentation set (for now
  `oxford_iiit_pet`), resized, as a `tf.data.Dataset`.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

DIGIT_CLASSES = 11  # the background and the ten digits

# name: (number of classes, first label value, species feature or None).
TFDS_SETS = {"oxford_iiit_pet": (3, 1, "species")}


def digit_scenes(digits, *, image_size=16, seed=0):
    """Scenes of one digit each, from scikit-learn's bundled digits.

    Each 8x8 digit of the requested classes is placed at a random position
    on an `image_size` x `image_size` canvas with Gaussian noise (standard
    deviation 0.1). Its mask is `1 + digit` where the digit's ink is at
    least a quarter of full intensity and 0 elsewhere.

    Example:

    ```python
    images, masks = digit_scenes([0, 1, 2, 3, 4])
    ```

    Args:
        digits: Iterable of ints in `[0, 9]`, the digits to draw.
        image_size: Int >= 8, the canvas side. Defaults to `16`.
        seed: Int, seed of the positions and the noise. Defaults to `0`.

    Returns:
        `(images, masks)`: float32 `(n, image_size, image_size, 1)` in
        about `[0, 1]`, and int32 `(n, image_size, image_size)` in
        `[0, 10]`, for the `n` bundled samples of those digits.
    """
    digits = sorted(set(digits))
    if not digits or not all(
        isinstance(d, (int, np.integer)) and 0 <= d <= 9 for d in digits
    ):
        raise ValueError(
            "Invalid value for argument `digits`. Expected a non-empty list "
            f"of ints in [0, 9]. Received: digits={digits!r}"
        )
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(
            "Invalid value for argument `image_size`. Expected an int >= 8. "
            f"Received: image_size={image_size!r}"
        )
    bundled = sklearn_datasets.load_digits()
    keep = np.isin(bundled.target, digits)
    glyphs = bundled.images[keep].astype("float32") / 16.0
    labels = bundled.target[keep]
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.normal(0.0, 0.1, size=(n, image_size, image_size))
    masks = np.zeros((n, image_size, image_size), "int32")
    rows = rng.integers(0, image_size - 8 + 1, size=n)
    cols = rng.integers(0, image_size - 8 + 1, size=n)
    for i in range(n):
        window = np.s_[i, rows[i] : rows[i] + 8, cols[i] : cols[i] + 8]
        images[window] += glyphs[i]
        masks[window] = np.where(glyphs[i] >= 0.25, 1 + labels[i], 0)
    return images[..., None].astype("float32"), masks


def tfds_segmentation(
    name, split, *, image_size=64, data_dir=None, species=None
):
    """A TensorFlow Datasets segmentation set as `(image, mask)` pairs.

    Images are resized bilinearly to `image_size` x `image_size` and scaled
    to `[0, 1]`; masks are resized with nearest neighbours (so no new labels
    appear) and shifted to start at 0. For `oxford_iiit_pet` the trimap
    labels 1 (pet), 2 (background) and 3 (border) become 0, 1 and 2.

    Example:

    ```python
    cats = tfds_segmentation("oxford_iiit_pet", "train", species=0)
    model.fit(cats.batch(32), epochs=5)
    ```

    Args:
        name: String, a key of `TFDS_SETS` (`"oxford_iiit_pet"`).
        split: String, a TFDS split (`"train"`, `"test[:50%]"`, ...).
        image_size: Int > 0, the side of the resized images. Defaults to
            `64`.
        data_dir: String or `None`, the TFDS data directory. Defaults to
            `None` (TFDS's default).
        species: Int or `None`; for sets with a species feature (pets: 0
            cats, 1 dogs), keep only that species. Defaults to `None` (all).

    Returns:
        A `tf.data.Dataset` of float32 `(image_size, image_size, 3)` images
        and int32 `(image_size, image_size)` masks, unbatched.
    """
    if name not in TFDS_SETS:
        raise ValueError(
            "Invalid value for argument `name`. Expected one of "
            f"{tuple(TFDS_SETS)}. Received: name={name!r}"
        )
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(
            "Invalid value for argument `image_size`. Expected an int > 0. "
            f"Received: image_size={image_size!r}"
        )
    classes, first_label, species_key = TFDS_SETS[name]
    dataset = tfds.load(name, split=split, data_dir=data_dir)
    if species is not None:
        dataset = dataset.filter(
            lambda example: example[species_key] == species
        )

    def to_pair(example):
        image = tf.image.resize(example["image"], (image_size, image_size))
        mask = tf.image.resize(
            example["segmentation_mask"],
            (image_size, image_size),
            method="nearest",
        )
        mask = tf.cast(mask[..., 0], "int32") - first_label
        # Keeps labels in range whatever the source (mock data is random).
        mask = tf.clip_by_value(mask, 0, classes - 1)
        return image / 255.0, mask

    return dataset.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
