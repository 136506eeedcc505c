"""finetune's --retained_split: forgetting in each epoch's logs."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from examples import common_flags
from examples import finetune
from examples import pretrain
from examples.lib import arrays
from keras_sft import data

FLAGS = flags.FLAGS
TINY = {
    "train_split": "train[:32]",
    "test_split": "test[:16]",
    "batch_size": 16,
    "epochs": 2,
}


@pytest.fixture(autouse=True)
def _parsed_flags():
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()


def _epoch_scalars(log_dir):
    """`{tag: [value per epoch]}` of the TensorBoard logs of training."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "train", "*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                # The run also holds the model's graph (Keras's `keras`
                # summary), as a plain model's does.
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue
                scalars.setdefault(value.tag, []).append(
                    float(tf.make_ndarray(value.tensor))
                )
    return scalars


def test_retained_split_logs_retained_accuracy_and_agreement(tmp_path):
    pretrained = str(tmp_path / "pretrained.keras")
    with flagsaver.flagsaver(**TINY, output=pretrained):
        pretrain.main(["pretrain"])
    output = str(tmp_path / "finetuned.keras")
    log_dir = str(tmp_path / "logs")
    with flagsaver.flagsaver(
        **TINY,
        pretrained=pretrained,
        output=output,
        log_dir=log_dir,
        classes=["0-4"],
        shift="invert",
        retained_split="test[:64]",
        retained_classes=["5-9"],
        **{"lambda": 0.5},
    ):
        finetune.main(["finetune"])

    scalars = _epoch_scalars(log_dir)
    assert len(scalars["epoch_retained_accuracy"]) == 2
    assert len(scalars["epoch_teacher_agreement"]) == 2
    # The last epoch's values are the saved student's, computed again.
    retained = data.select_classes(
        data.load("digits", split="test[:64]")[0], [5, 6, 7, 8, 9]
    )
    images, labels = arrays.to_arrays(retained)
    student = keras.models.load_model(output).predict(images, verbose=0)
    teacher = keras.models.load_model(pretrained).predict(images, verbose=0)
    classes = student.argmax(-1)
    assert scalars["epoch_retained_accuracy"][-1] == pytest.approx(
        np.mean(classes == labels)
    )
    assert scalars["epoch_teacher_agreement"][-1] == pytest.approx(
        np.mean(classes == teacher.argmax(-1))
    )


def test_without_retained_split_there_is_no_sample():
    with flagsaver.flagsaver(retained_split=None, retained_classes=["5-9"]):
        assert common_flags.load_retained() is None
    with flagsaver.flagsaver(retained_split="", retained_classes=[]):
        assert common_flags.load_retained() is None


def test_retained_sample_of_the_original_domain():
    with flagsaver.flagsaver(
        retained_split="test[:40]", retained_classes=["5-9"], shift="invert"
    ):
        retained = common_flags.load_retained()
    images, labels = arrays.to_arrays(retained)
    expected = data.load("digits", split="test[:40]")[0]
    expected = [(x, y) for x, y in expected.as_numpy_iterator() if y >= 5]
    assert labels.tolist() == [y for _, y in expected]
    np.testing.assert_array_equal(images, np.stack([x for x, _ in expected]))


def test_empty_retained_sample_is_refused():
    with (
        flagsaver.flagsaver(
            retained_split="test[:16]", retained_classes=["12"]
        ),
        pytest.raises(
            ValueError,
            match=r"^The retained sample is empty: "
            r"--retained_split=test\[:16\] of --dataset=digits with "
            r"--retained_classes=12 holds no example; pass a split \(and "
            r"classes\) with examples$",
        ),
    ):
        common_flags.load_retained()


def test_retained_classes_are_validated():
    with pytest.raises(flags.IllegalFlagValueError, match="'5-'"):
        FLAGS.retained_classes = ["5-"]
