"""`tf.data` pipelines for image classification: digits and TFDS sets.

`load` gives an unbatched `tf.data.Dataset` of `(image, label)` pairs:
float32 images of shape `(height, width, channels)` scaled to `[0, 1]` and
int32 labels, for scikit-learn's bundled 8x8 digits (`"digits"`, offline)
or any TensorFlow Datasets image-classification set by name. `rescaling`
is the same scaling as a Keras layer, for an export that takes raw pixels
(`keras_sft.export_saved_model(..., preprocessing=...)`).
`select_classes`, `shift_domain` and `batch` make the two halves of a
forgetting experiment.

Example:

```python
train, num_classes = data.load("digits", split="train[:50%]")
new_task = data.shift_domain(
    data.select_classes(train, classes=[0, 1, 2, 3, 4]), shift="invert"
)
dataset = data.batch(new_task, batch_size=32, shuffle_seed=0)
```
"""

import collections

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_sft import _checks

# The digits come in one block of 1797 images; a fixed permutation followed
# by a 70/30 cut gives reproducible, class-balanced "train" and "test" splits.
DIGITS_SPLITS = {"train": 1257, "test": 540}
_DIGITS_PERMUTATION_SEED = 0

# The largest raw pixel value of each source, the one definition of the
# scaling to [0, 1] that `load` applies and `rescaling` exports: the digits
# count 0..16 pen pixels per 4x4 block, TFDS images are uint8.
MAX_INTENSITY = {"digits": 16.0}
UINT8_MAX_INTENSITY = 255.0

SHIFTS = ("none", "invert", "rot90")


def load(name="digits", *, split="train", data_dir=None):
    """Returns an unbatched dataset of `(image, label)` and its class count.

    Images are float32, shape `(height, width, channels)`, scaled to
    `[0, 1]`; labels are int32 in `[0, num_classes)`. `"digits"` reads
    scikit-learn's bundled copy of the UCI 8x8 handwritten digits and never
    downloads anything; any other name is read with `tfds.load`
    (downloading into `data_dir` if needed).

    Example:

    ```python
    test, num_classes = data.load("mnist", split="test")
    ```

    Args:
        name: String, `"digits"` or a TensorFlow Datasets name with
            supervised `(image, label)` keys, such as `"mnist"`,
            `"fashion_mnist"` or `"cifar10"`. Defaults to `"digits"`.
        split: String, a split in TFDS syntax, slices included (`"train"`,
            `"test"`, `"train[:50%]"`). The digits have `"train"` (1257
            images) and `"test"` (540). Defaults to `"train"`.
        data_dir: String, the TFDS data directory, or `None` for TFDS's
            default. Unused for `"digits"`. Defaults to `None`.

    Returns:
        A tuple `(dataset, num_classes)`.
    """
    if name == "digits":
        return _load_digits(split), 10
    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        with_info=True,
    )
    dataset = dataset.map(
        _normalizer(max_intensity(name)), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset, info.features["label"].num_classes


def max_intensity(name):
    """The largest raw pixel value of dataset `name`, which `load` maps to 1.

    Example:

    ```python
    data.max_intensity("digits")  # 16.0; 255.0 for TFDS sets
    ```

    Args:
        name: String, a dataset name as `load` takes it.

    Returns:
        A float, `MAX_INTENSITY[name]`, or `UINT8_MAX_INTENSITY` for a name
        without an entry (TFDS images are uint8).
    """
    return MAX_INTENSITY.get(name, UINT8_MAX_INTENSITY)


def rescaling(name):
    """The scaling `load` applies to dataset `name`'s images, as a layer.

    Exported before the student (`keras_sft.export_saved_model(...,
    preprocessing=data.rescaling(name))`), it lets a client send raw
    pixels (0..16 for the digits, 0..255 for TFDS sets) as float32: both
    read the same `max_intensity`, so they cannot disagree.

    Example:

    ```python
    keras_sft.export_saved_model(
        model, "serving", preprocessing=data.rescaling("digits")
    )
    ```

    Args:
        name: String, a dataset name as `load` takes it.

    Returns:
        A `keras.layers.Rescaling` by `1 / max_intensity(name)`.
    """
    return keras.layers.Rescaling(1.0 / max_intensity(name), name="rescaling")


def select_classes(dataset, classes):
    """Keeps the `(image, label)` pairs whose label is in `classes`.

    The result has a known size (`cardinality`), counted with one pass over
    the labels, so Keras knows the number of steps of an epoch.

    Example:

    ```python
    old_task = data.select_classes(dataset, classes=[5, 6, 7, 8, 9])
    ```

    Args:
        dataset: A `tf.data.Dataset` of unbatched `(image, label)` pairs.
        classes: Non-empty sequence of int labels to keep.

    Returns:
        The filtered `tf.data.Dataset`.
    """
    classes = list(classes)
    if not classes or not all(
        isinstance(c, int | np.integer) and c >= 0 for c in classes
    ):
        raise ValueError(
            "Invalid value for argument `classes`. Expected a non-empty "
            f"sequence of ints >= 0. Received: classes={classes!r}"
        )
    kept = tf.constant(classes, dtype=tf.int32)

    def keep(image, label):
        return tf.reduce_any(tf.equal(label, kept))

    # A filter hides the dataset's size from Keras, which then cannot show
    # the steps of an epoch and warns that the input "ran out of data" at
    # the end of the first one; one pass over the labels restores it.
    count = dataset.map(lambda image, label: label).reduce(
        np.int64(0),
        lambda total, label: total + tf.cast(keep(None, label), tf.int64),
    )
    return dataset.filter(keep).apply(
        tf.data.experimental.assert_cardinality(count)
    )


def shift_domain(dataset, shift):
    """Moves the images of `(image, label)` pairs to another domain.

    The shifts are deterministic and keep what makes a class a class, so a
    model can learn the shifted domain, while making the images look unlike
    the original ones (a pretrained model does poorly on them):

    - `"none"`: the images as they are.
    - `"invert"`: `1 - image`, a negative (dark strokes on a light
      background, as a scanner that outputs negatives would give).
    - `"rot90"`: each image rotated by 90 degrees counter-clockwise (a
      camera mounted on its side).

    Example:

    ```python
    negatives = data.shift_domain(dataset, shift="invert")
    ```

    Args:
        dataset: A `tf.data.Dataset` of unbatched `(image, label)` pairs,
            images in `[0, 1]` of shape `(height, width, channels)`.
        shift: String, one of `"none"`, `"invert"` or `"rot90"`.

    Returns:
        The shifted `tf.data.Dataset`.
    """
    _checks.check_one_of("shift", shift, SHIFTS)
    if shift == "none":
        return dataset
    if shift == "invert":
        return dataset.map(lambda image, label: (1.0 - image, label))
    return dataset.map(lambda image, label: (tf.image.rot90(image), label))


def batch(
    dataset, *, batch_size, shuffle_seed=None, shuffle_buffer_size=10_000
):
    """Shuffles (optionally), batches and prefetches a dataset.

    With a `shuffle_seed` the order is reshuffled at each epoch, and the
    sequence of orders is the same on every run with the same seed.

    Example:

    ```python
    train = data.batch(dataset, batch_size=64, shuffle_seed=0)
    ```

    Args:
        dataset: An unbatched `tf.data.Dataset`.
        batch_size: Int > 0, the global batch size (under a strategy each
            replica gets `batch_size / num_replicas_in_sync`).
        shuffle_seed: Int, the shuffling seed, or `None` to keep the order
            (for evaluation). Defaults to `None`.
        shuffle_buffer_size: Int > 0, the shuffle buffer. Defaults to
            `10_000` (all of the digits).

    Returns:
        The batched, prefetched `tf.data.Dataset`.
    """
    _checks.check_int("batch_size", batch_size, minimum=1)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(
            shuffle_buffer_size,
            seed=shuffle_seed,
            reshuffle_each_iteration=True,
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _load_digits(split):
    """The digits split `split` as a dataset of 8x8x1 images in [0, 1]."""
    # scikit-learn ships the digits; the core install does not need it.
    try:
        from sklearn import datasets as sklearn_datasets
    except ImportError as error:
        raise ImportError(
            "The digits dataset needs scikit-learn: "
            'pip install "keras-sft[examples]"'
        ) from error
    digits = sklearn_datasets.load_digits()
    order = np.random.default_rng(_DIGITS_PERMUTATION_SEED).permutation(
        len(digits.target)
    )
    images = (digits.images[order] / max_intensity("digits")).astype("float32")
    labels = digits.target[order].astype("int32")
    starts = {"train": 0, "test": DIGITS_SPLITS["train"]}
    name_to_info = {
        name: _SplitInfo(count) for name, count in DIGITS_SPLITS.items()
    }
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
            name_to_info
        )
    except (ValueError, KeyError) as error:
        raise ValueError(
            "Invalid value for argument `split`. Expected a split of "
            f"{tuple(DIGITS_SPLITS)} in TFDS syntax (such as 'train[:50%]'). "
            f"Received: split={split!r}"
        ) from error
    indices = np.concatenate(
        [
            starts[i.splitname]
            + np.arange(DIGITS_SPLITS[i.splitname])[i.from_ : i.to]
            for i in instructions
        ]
    )
    return tf.data.Dataset.from_tensor_slices(
        (images[indices, :, :, np.newaxis], labels[indices])
    )


# The one attribute of a TFDS split info that `ReadInstruction` reads.
_SplitInfo = collections.namedtuple("_SplitInfo", ["num_examples"])


def _normalizer(maximum):
    """Maps uint8 images to float32 `image / maximum` and labels to int32."""

    def normalize(image, label):
        return tf.cast(image, tf.float32) / maximum, tf.cast(label, tf.int32)

    return normalize
