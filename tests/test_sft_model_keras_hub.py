"""`SFTModel` of keras-hub tasks: raw samples, token-level SFT, and a
student that is still a working task. Tiny random-init models, offline."""

import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers

keras_hub = pytest.importorskip("keras_hub")

from tests import hub_tasks  # noqa: E402


def _numpy_cross_entropy(logits, labels, weights):
    """Keras's weighted sparse cross-entropy: the sum over every position
    of `weights * ce`, over the number of positions."""
    ce = -np.take_along_axis(
        helpers.log_softmax(logits.astype("float64")),
        labels[..., None].astype("int64"),
        axis=-1,
    )[..., 0]
    return (ce * weights).sum() / ce.size


def _numpy_kl(teacher_logits, student_logits, weights):
    """The weighted mean of KL(teacher || student) over every position."""
    teacher = helpers.log_softmax(teacher_logits.astype("float64"))
    student = helpers.log_softmax(student_logits.astype("float64"))
    kl = (np.exp(teacher) * (teacher - student)).sum(axis=-1)
    return (kl * weights).sum() / kl.size


def _to_numpy(outputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def test_train_on_batch_preprocesses_raw_strings_as_the_task_does():
    task = hub_tasks.bert_text_classifier()
    strings = ["the quick fox", "brown jumps", "the fox", "quick brown the"]
    labels = np.array([0, 1, 2, 0])
    logits = _to_numpy(task(task.preprocessor(strings)))
    before = task.get_weights()
    model = keras_sft.SFTModel(task, lambda_=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1))

    logs = model.train_on_batch(strings, labels, return_dict=True)

    # The losses of the step are those of the task before its update.
    np.testing.assert_allclose(
        logs["task_loss"],
        _numpy_cross_entropy(logits, labels, np.ones(len(labels))),
        rtol=1e-5,
    )
    np.testing.assert_allclose(logs["distill_loss"], 0.0, atol=1e-6)
    moved = [
        np.abs(a - b).max()
        for a, b in zip(task.get_weights(), before, strict=True)
    ]
    assert max(moved) > 0
    # The traced predict function and the eager call may order their sums
    # differently: one BERT layer (hidden 8, intermediate 16, 12 tokens)
    # then the classifier, whose longest reductions add up to 8 + 16 + 12.
    helpers.assert_close_across_op_orders(
        model.predict_on_batch(strings),
        _to_numpy(task(task.preprocessor(strings))),
        dtype="float32",
        terms=8 + 16 + 12 + 8,
    )


def test_causal_lm_batch_losses_weigh_tokens_by_padding():
    task = hub_tasks.gpt2_causal_lm()
    # Of different lengths, so the padding mask has zeros to weigh.
    strings = ["a b", "ab a b ab", "b", "a ab"]
    model = keras_sft.SFTModel(task, lambda_=0.5, distance="kl")
    model.compile(optimizer="adam")
    # The student moves away from its teacher, as in fine-tuning.
    rng = np.random.default_rng(0)
    for variable in task.trainable_weights:
        noise = rng.normal(scale=0.3, size=variable.shape)
        variable.assign(variable + noise.astype(variable.dtype))

    logs = model.test_on_batch(strings, return_dict=True)

    x, labels, padding = _to_numpy(task.preprocessor(strings))
    padding = padding.astype("float32")
    assert 0 < padding.sum() < padding.size
    student, teacher = _to_numpy(task(x)), _to_numpy(model.teacher(x))
    task_loss = _numpy_cross_entropy(student, labels, padding)
    distill_loss = _numpy_kl(teacher, student, padding)
    assert distill_loss > 1e-3
    np.testing.assert_allclose(logs["task_loss"], task_loss, rtol=1e-5)
    np.testing.assert_allclose(logs["distill_loss"], distill_loss, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], task_loss + 0.5 * distill_loss, rtol=1e-5
    )
    np.testing.assert_allclose(
        model.predict_on_batch(strings), student, rtol=1e-6, atol=1e-6
    )


@pytest.mark.slow
def test_text_classifier_trains_evaluates_and_predicts_raw_strings():
    task = hub_tasks.bert_text_classifier()
    strings = np.array(
        ["the quick fox", "brown jumps", "the fox", "quick brown the"] * 2
    )
    labels = np.array([0, 1, 2, 0] * 2)
    model = keras_sft.SFTModel(task, lambda_=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))

    model.fit(strings, labels, batch_size=4, epochs=1, verbose=0)

    logits = task.predict(strings, verbose=0)
    np.testing.assert_array_equal(model.predict(strings, verbose=0), logits)
    logs = model.evaluate(strings, labels, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["task_loss"],
        _numpy_cross_entropy(logits, labels, np.ones(len(labels))),
        rtol=1e-5,
    )
    assert logs["distill_loss"] > 0


def test_image_classifier_trains_on_raw_images():
    task = hub_tasks.resnet_image_classifier()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = rng.integers(0, 3, 8)
    before = task.predict(images, verbose=0)
    model = keras_sft.SFTModel(task, lambda_=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))

    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)

    after = model.predict(images, verbose=0)
    np.testing.assert_array_equal(after, task.predict(images, verbose=0))
    assert np.abs(after - before).max() > 0


@pytest.mark.slow
def test_causal_lm_token_level_sft_weighs_tokens_by_padding(tmp_path):
    task = hub_tasks.gpt2_causal_lm()
    # Of different lengths, so the padding mask has zeros to weigh.
    strings = np.array(["a b", "ab a b ab", "b", "a ab"])
    x, labels, padding = task.preprocessor(strings.tolist())
    padding = keras.ops.convert_to_numpy(padding).astype("float32")
    assert 0 < padding.sum() < padding.size
    model = keras_sft.SFTModel(task, lambda_=1.0, distance="kl")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))

    logs = model.evaluate(strings, verbose=0, return_dict=True)

    logits = keras.ops.convert_to_numpy(task(x))
    np.testing.assert_allclose(
        logs["task_loss"],
        _numpy_cross_entropy(
            logits, keras.ops.convert_to_numpy(labels), padding
        ),
        rtol=1e-5,
    )
    # The teacher is the student before training: nothing to distill yet.
    np.testing.assert_allclose(logs["distill_loss"], 0.0, atol=1e-6)

    model.fit(strings, batch_size=2, epochs=2, verbose=0)

    assert (
        model.evaluate(strings, verbose=0, return_dict=True)["distill_loss"] > 0
    )
    # The student is still a working task, and loads back as one.
    generated = task.generate(["a b"], max_length=8)
    assert generated[0].startswith("a b")
    task.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)),
        keras.ops.convert_to_numpy(task(x)),
    )
