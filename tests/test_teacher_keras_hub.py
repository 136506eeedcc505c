"""`clone_teacher` of keras-hub tasks: tiny random-init models, offline."""

import keras
import numpy as np
import pytest

from keras_sft import clone_teacher

keras_hub = pytest.importorskip("keras_hub")


def _to_numpy(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def _assert_frozen_copy(teacher, task):
    assert type(teacher) is type(task)
    assert not teacher.trainable
    assert teacher.trainable_weights == []
    assert {id(v) for v in teacher.weights}.isdisjoint(
        id(v) for v in task.weights
    )


def _gpt2_causal_lm():
    tokens = ["<|endoftext|>", "a", "b", "Ġ", "Ġa", "Ġb", "ab", "Ġab"]
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=["a b", "Ġ a", "Ġ b", "Ġa b"],
    )
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens),
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=8
    )
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=preprocessor
    )


def test_causal_lm_teacher_is_an_identical_frozen_task():
    # `clone_model` + `set_weights` fails on this task ("a weight list of
    # length 36, but the layer was expecting 37").
    task = _gpt2_causal_lm()
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
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + ["the", "quick", "brown", "fox", "jumps"]
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=10,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=12
    )
    task = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor
    )
    strings = np.array(["the quick fox", "brown jumps over"], dtype=object)
    teacher = clone_teacher(task)
    _assert_frozen_copy(teacher, task)
    np.testing.assert_array_equal(
        teacher.predict(strings, verbose=0), task.predict(strings, verbose=0)
    )


def test_image_classifier_teacher_predicts_raw_images_identically():
    backbone = keras_hub.models.ResNetBackbone(
        # ResNetBackbone requires 64 filters in its first stack.
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(16, 16, 3),
    )
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(
        image_converter=keras_hub.layers.ResNetImageConverter(
            image_size=(16, 16), scale=1 / 255.0
        )
    )
    task = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    images = images.astype("float32")
    # Move the BatchNormalization statistics away from their initial values.
    task(images, training=True)
    teacher = clone_teacher(task)
    _assert_frozen_copy(teacher, task)
    np.testing.assert_array_equal(
        teacher.predict(images, verbose=0), task.predict(images, verbose=0)
    )
