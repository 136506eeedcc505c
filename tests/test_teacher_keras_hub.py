"""`clone_teacher` of keras-hub tasks: tiny random-init models, offline."""

import keras
import numpy as np
import pytest

from keras_sft import clone_teacher

pytest.importorskip("keras_hub")

from tests import hub_tasks  # noqa: E402


def _to_numpy(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _assert_frozen_copy(teacher, task):
    assert type(teacher) is type(task)
    assert not teacher.trainable
    assert teacher.trainable_weights == []
    assert {id(v) for v in teacher.weights}.isdisjoint(
        id(v) for v in task.weights
    )


def test_causal_lm_teacher_is_an_identical_frozen_task():
    # `clone_model` + `set_weights` fails on this task ("a weight list of
    # length 36, but the layer was expecting 37").
    task = hub_tasks.gpt2_causal_lm()
    batch = {
        "token_ids": np.array([[1, 2, 3, 4, 0, 0], [5, 6, 7, 0, 0, 0]]),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
    }
    teacher = clone_teacher(task)
    _assert_frozen_copy(teacher, task)
    np.testing.assert_array_equal(
        _to_numpy(teacher(batch)), _to_numpy(task(batch))
    )
    assert teacher.preprocessor.tokenizer.get_vocabulary() == (
        task.preprocessor.tokenizer.get_vocabulary()
    )
    prompts = ["a b", "ab a"]
    assert teacher.generate(prompts, max_length=8) == task.generate(
        prompts, max_length=8
    )


def test_text_classifier_teacher_predicts_raw_strings_identically():
    task = hub_tasks.bert_text_classifier()
    strings = np.array(["the quick fox", "brown jumps over"], dtype=object)
    teacher = clone_teacher(task)
    _assert_frozen_copy(teacher, task)
    np.testing.assert_array_equal(
        teacher.predict(strings, verbose=0), task.predict(strings, verbose=0)
    )


def test_image_classifier_teacher_predicts_raw_images_identically():
    task = hub_tasks.resnet_image_classifier()
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    images = images.astype("float32")
    # Move the BatchNormalization statistics away from their initial values.
    task(images, training=True)
    teacher = clone_teacher(task)
    _assert_frozen_copy(teacher, task)
    np.testing.assert_array_equal(
        teacher.predict(images, verbose=0), task.predict(images, verbose=0)
    )
