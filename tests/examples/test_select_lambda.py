"""The select_lambda binary, in-process on tiny data."""

import pytest
from absl import flags
from absl.testing import flagsaver

from examples import select_lambda as binary
from examples.lib import classifiers


@pytest.mark.slow
def test_binary_cross_validates_and_plots(tmp_path, capsys):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    pretrained = str(tmp_path / "pretrained.keras")
    classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10
    ).save(pretrained)
    plot = tmp_path / "curve.png"
    with flagsaver.flagsaver(
        pretrained=pretrained,
        train_split="train[:30]",
        retained_split="test[:20]",
        retained_classes=["5-9"],
        classes=["0-4"],
        shift="invert",
        lambda_grid=["0", "1"],
        folds=2,
        epochs=1,
        plot=str(plot),
    ):
        selection = binary.select()
    assert [score.lambda_ for score in selection.scores] == [0.0, 1.0]
    assert selection.lambda_ in (0.0, 1.0)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert selection.to_markdown() in out
    assert f"Chosen lambda: {selection.lambda_:g}" in out
    with pytest.raises(Exception, match="Unexpected arguments"):
        binary.main(["select_lambda", "extra"])


def test_the_distance_flag_reaches_select_lambda(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf

    import keras_sft
    from examples.lib import lambda_selection
    from examples.lib.training_config import TrainingConfig

    pretrained = str(tmp_path / "pretrained.keras")
    classifiers.build_classifier(
        "mlp", input_shape=(8, 8, 1), num_classes=10
    ).save(pretrained)
    received = {}

    def select(model, x, y, **kwargs):
        received.update(kwargs)
        return _selection()

    monkeypatch.setattr(keras_sft, "select_lambda", select)
    train = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 8, 8, 1), "float32"), np.arange(4))
    )
    lambda_selection.cross_validate(
        pretrained=pretrained,
        train=train,
        retained=None,
        lambdas=(0.0, 1.0),
        folds=2,
        tolerance=0.02,
        strategy=tf.distribute.get_strategy(),
        config=TrainingConfig(distance="kl"),
    )
    assert received["distance"] == "kl"


def _selection():
    from keras_sft.select_lambda import LambdaScore
    from keras_sft.select_lambda import LambdaSelection

    score = LambdaScore(0.0, 1.0, 0.0, None)
    return LambdaSelection(lambda_=0.0, scores=(score,), tolerance=0.02)
