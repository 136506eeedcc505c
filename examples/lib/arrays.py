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


def sample_inputs(dataset, count, *, seed):
    """`count` inputs (or all, if fewer) of an unbatched `(image, label)`
    dataset, drawn at random with `seed`, as one numpy array: anchor inputs
    for `SFTModel.fit(anchor_x=...)`.

    Raises:
        ValueError: if `dataset` is empty.
    """
    images, _ = to_arrays(dataset)
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order[:count]]
