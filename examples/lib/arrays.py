"""Small unbatched datasets as numpy arrays."""

import numpy as np


def to_arrays(dataset):
    """An unbatched `(image, label)` dataset as two numpy arrays.

    Raises:
        ValueError: if `dataset` is empty.
    """
    pairs = list(dataset.as_numpy_iterator())
    if not pairs:
        raise ValueError(
            "The selected data is empty; check the split and the classes"
        )
    images, labels = zip(*pairs, strict=True)
    return np.stack(images), np.array(labels)
