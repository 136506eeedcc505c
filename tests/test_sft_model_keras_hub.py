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
