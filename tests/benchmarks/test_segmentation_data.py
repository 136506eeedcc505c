import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

from benchmarks.experiments import segmentation_data


def test_digit_scenes_masks_follow_the_ink():
    images, masks = segmentation_data.digit_scenes([3, 7], image_size=12)
    bundled = sklearn_datasets.load_digits()
    keep = np.isin(bundled.target, [3, 7])
    labels = bundled.target[keep]
    ink = (bundled.images[keep] / 16.0 >= 0.25).sum(axis=(1, 2))
    assert images.shape == (len(labels), 12, 12, 1)
    assert images.dtype == np.float32 and masks.dtype == np.int32
    for mask, label, count in zip(masks, labels, ink, strict=True):
        assert set(np.unique(mask)) == {0, 1 + label}
        assert (mask > 0).sum() == count


def test_digit_scenes_are_seeded():
    a, _ = segmentation_data.digit_scenes([0], seed=1)
    b, _ = segmentation_data.digit_scenes([0], seed=1)
    c, _ = segmentation_data.digit_scenes([0], seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"digits": [10]},
            r"Invalid value for argument `digits`. Expected a non-empty list "
            r"of ints in \[0, 9\]. Received: digits=\[10\]",
        ),
        ({"digits": []}, r"Received: digits=\[\]"),
        (
            {"digits": [1], "image_size": 4},
            r"Invalid value for argument `image_size`. Expected an int >= 8. "
            r"Received: image_size=4",
        ),
    ],
)
def test_digit_scenes_refuse_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmentation_data.digit_scenes(**kwargs)


def test_tfds_segmentation_with_mock_data():
    with tfds.testing.mock_data(num_examples=6):
        pairs = list(
            segmentation_data.tfds_segmentation(
                "oxford_iiit_pet", "train", image_size=16
            ).as_numpy_iterator()
        )
        cats = segmentation_data.tfds_segmentation(
            "oxford_iiit_pet", "train", image_size=16, species=0
        )
        dogs = segmentation_data.tfds_segmentation(
            "oxford_iiit_pet", "train", image_size=16, species=1
        )
        split = len(list(cats)) + len(list(dogs))
    assert len(pairs) == 6 == split
    for image, mask in pairs:
        assert image.shape == (16, 16, 3) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert mask.shape == (16, 16) and mask.dtype == np.int32
        assert mask.min() >= 0 and mask.max() <= 2


def test_tfds_segmentation_refuses_unknown_sets():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `name`. Expected one of "
        r"\('oxford_iiit_pet',\). Received: name='mnist'",
    ):
        segmentation_data.tfds_segmentation("mnist", "train")
