import pytest
import tensorflow as tf

from keras_sft import strategy


def test_default_is_the_current_strategy():
    assert strategy.build_strategy("default") is tf.distribute.get_strategy()


def test_mirrored_over_given_devices():
    mirrored = strategy.build_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 2


def test_unknown_name_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Invalid value for argument `name`. Expected one of "
        r"\('default', 'mirrored', 'multi_worker', 'tpu'\). "
        r"Received: name='gpu'",
    ):
        strategy.build_strategy("gpu")
