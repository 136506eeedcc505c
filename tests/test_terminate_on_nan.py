import keras
import numpy as np
import pytest

import keras_sft
from tests import helpers


def test_divergence_stops_with_step_and_terms(tmp_path):
    x, y, _ = helpers.classification_data(n=32)
    # A corrupt sample in the third batch of 8: its squared logit difference
    # overflows float32 while its cross-entropy stays finite.
    x[20] = 1e30
    # The step guard would refuse the step and stop first, in the step.
    model = keras_sft.SFTModel(
        helpers.mlp(), lambda_=1.0, distance="mse", guard_nonfinite=False
    )
    model.compile(optimizer="sgd")
    checkpoint = str(tmp_path / "last.weights.h5")
    model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
    model.save_weights(checkpoint)
    good = [w.copy() for w in model.get_weights()]

    with pytest.raises(
        RuntimeError,
        match=r"Non-finite loss at epoch 1, step 3: loss=inf, "
        r"task_loss=[0-9.e+]+, distill_loss=inf\. Training stopped",
    ):
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras_sft.TerminateOnNaN(),
                keras.callbacks.ModelCheckpoint(
                    checkpoint, save_weights_only=True
                ),
            ],
        )
    # The checkpoint written before the failure still holds finite weights.
    model.load_weights(checkpoint)
    for a, b in zip(model.get_weights(), good, strict=True):
        np.testing.assert_array_equal(a, b)


def test_finite_training_is_not_interrupted():
    x, y, _ = helpers.classification_data(n=32)
    model = keras_sft.SFTModel(helpers.mlp())
    model.compile(optimizer="sgd")
    history = model.fit(
        x, y, epochs=2, verbose=0, callbacks=[keras_sft.TerminateOnNaN()]
    )
    assert len(history.history["loss"]) == 2
