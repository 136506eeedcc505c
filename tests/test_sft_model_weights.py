"""`SFTModel`'s weights where a user touches them (lists, files, Keras's
checkpoint callbacks), the same whether its teacher shares the student's
frozen weights (`teacher=None`) or holds copies (`teacher=` given): each
workflow runs on both and they are compared."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from tests import helpers

SHARING = [True, False]


def _model(*, sharing, frozen=True, cache_teacher=False):
    """An `SFTModel` of `helpers.mlp()` whose first layer is frozen, with
    the default teacher (which shares that layer) or a copied one."""
    keras.utils.set_random_seed(0)
    student = helpers.mlp()
    student.layers[1].trainable = not frozen
    teacher = None if sharing else keras_sft.clone_teacher(student)
    model = keras_sft.SFTModel(
        student, teacher, lambda_=0.5, cache_teacher=cache_teacher
    )
    _compile(model)
    return model


def _compile(model):
    model.compile(optimizer=keras.optimizers.SGD(0.1))


def _fit(model, epochs=1, **kwargs):
    x, y, _ = helpers.classification_data()
    model.fit(
        x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, **kwargs
    )


def _train_then_unfreeze(model, **kwargs):
    """One epoch frozen, then the first layer unfrozen and one epoch more:
    the student's first layer then differs from the teacher's."""
    _fit(model)
    model.student.layers[1].trainable = True
    _compile(model)
    _fit(model, **kwargs)


def _shares(model):
    """Whether the teacher computes with the student's first kernel."""
    return model.teacher.layers[1].kernel is model.student.layers[1].kernel


def _pretrained():
    return helpers.mlp().get_weights()


def _assert_teacher_is_pretrained(model):
    for weight, value in zip(
        model.teacher.get_weights(), _pretrained(), strict=True
    ):
        np.testing.assert_array_equal(weight, value)


def _assert_same_weights(weights, expected):
    assert len(weights) == len(expected)
    for weight, value in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(weight, value)


def test_weight_lists_list_the_teacher_whole():
    shared, copied = _model(sharing=True), _model(sharing=False)
    assert _shares(shared) and not _shares(copied)

    _assert_same_weights(shared.get_weights(), copied.get_weights())
    assert len(shared.get_weights()) == 8
    assert shared.count_params() == copied.count_params()
    # Layer names differ between the two builds; the shapes do not.
    for listed in ("weights", "trainable_weights", "non_trainable_weights"):
        assert [w.shape for w in getattr(shared, listed)] == [
            w.shape for w in getattr(copied, listed)
        ]


@pytest.mark.parametrize("sharing", SHARING)
def test_weight_lists_fit_a_cloned_and_a_loaded_model(sharing, tmp_path):
    model = _model(sharing=sharing)
    _train_then_unfreeze(model)
    weights = model.get_weights()
    clone = keras.models.clone_model(model)
    loaded = helpers.keras_round_trip(model, tmp_path)

    clone.set_weights(weights)
    _assert_same_weights(clone.get_weights(), weights)
    _assert_same_weights(loaded.get_weights(), weights)
    model.set_weights(loaded.get_weights())
    _assert_same_weights(model.get_weights(), weights)
    _assert_teacher_is_pretrained(model)


def test_unfrozen_weight_is_listed_once_among_the_trainable():
    model = _model(sharing=True)
    model.student.layers[1].trainable = True

    trainable = [id(w) for w in model.trainable_weights]
    assert trainable == [id(w) for w in model.student.trainable_weights]
    assert len(model.weights) == 8


@pytest.mark.parametrize("sharing", SHARING)
def test_set_weights_writes_the_teacher_its_own_values(sharing):
    model = _model(sharing=sharing)
    weights = model.get_weights()
    changed = [w + 1.0 for w in weights]

    # The student's entries changed, the teacher's (the last 4) as before.
    model.set_weights(changed[:4] + weights[4:])

    _assert_same_weights(model.student.get_weights(), changed[:4])
    _assert_teacher_is_pretrained(model)
    assert not _shares(model)

    model.set_weights(weights)

    _assert_same_weights(model.get_weights(), weights)


def test_teacher_shares_again_after_loading_equal_weights(tmp_path):
    model = _model(sharing=True)
    _fit(model)
    path = str(tmp_path / "frozen.weights.h5")
    model.save_weights(path)
    fresh = _model(sharing=True)

    fresh.load_weights(path)

    assert _shares(fresh)
    _assert_same_weights(fresh.get_weights(), model.get_weights())


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("name", ["sft.weights.h5", "sft.keras"])
def test_weights_saved_after_unfreezing_load_into_a_frozen_model(
    sharing, name, tmp_path
):
    model = _model(sharing=sharing)
    _train_then_unfreeze(model)
    path = str(tmp_path / name)
    if name.endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)
    fresh = _model(sharing=sharing)

    fresh.load_weights(path)

    _assert_same_weights(fresh.get_weights(), model.get_weights())
    _assert_teacher_is_pretrained(fresh)
    x, _, _ = helpers.classification_data()
    np.testing.assert_array_equal(
        fresh.predict(x, verbose=0), model.predict(x, verbose=0)
    )


@pytest.mark.parametrize("sharing", SHARING)
def test_freezing_after_build_trains_and_saves_as_without_sharing(
    sharing, tmp_path
):
    model = _model(sharing=sharing, frozen=False)
    model.student.layers[1].trainable = False
    _compile(model)
    _fit(model, epochs=2)
    path = str(tmp_path / "sft.weights.h5")
    model.save_weights(path)
    fresh = _model(sharing=sharing)

    fresh.load_weights(path)

    _assert_same_weights(fresh.get_weights(), model.get_weights())
    _assert_teacher_is_pretrained(fresh)
    assert _shares(fresh) == sharing


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("frozen", [True, False])
def test_trainable_changed_without_compile_trains_as_the_plain_model(
    sharing, frozen
):
    # Keras takes a change of `trainable` into account at the next
    # `compile`: until then the plain model's step, traced once, trains
    # what it was traced with. The cached epochs of the second `fit` trace
    # the step again, for their inputs.
    keras.utils.set_random_seed(0)
    plain = helpers.mlp()
    plain.layers[1].trainable = not frozen
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model = _model(sharing=sharing, frozen=frozen, cache_teacher=True)
    changed = []
    for student, fitted in ((plain, plain), (model.student, model)):
        _fit(fitted)
        student.layers[1].trainable = frozen
        before = student.get_weights()
        _fit(fitted, epochs=3)
        changed.append(
            [
                not np.array_equal(b, a)
                for b, a in zip(before, student.get_weights(), strict=True)
            ]
        )

    assert changed[1] == changed[0] == [not frozen] * 2 + [True] * 2
    _assert_teacher_is_pretrained(model)


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("unfrozen", [True, False])
def test_tf_checkpoint_restores_each_model_its_own_values(
    sharing, unfrozen, tmp_path
):
    model = _model(sharing=sharing)
    if unfrozen:
        _train_then_unfreeze(model)
    else:
        _fit(model, epochs=2)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = _model(sharing=sharing)

    status = tf.train.Checkpoint(model=fresh).restore(path)

    status.assert_existing_objects_matched()
    _assert_same_weights(fresh.get_weights(), model.get_weights())
    _assert_teacher_is_pretrained(fresh)
    x, _, _ = helpers.classification_data()
    np.testing.assert_array_equal(
        fresh.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    # Where the restored student's frozen layer holds its pretrained
    # value, the teacher shares it again when training resumes.
    _fit(fresh)
    assert _shares(fresh) == (sharing and not unfrozen)
    _assert_teacher_is_pretrained(fresh)


@pytest.mark.slow
def test_tf_checkpoint_restores_under_a_mirrored_strategy(tmp_path):
    model = _model(sharing=True)
    _train_then_unfreeze(model)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    with helpers.two_cpu_strategy(through_one_device=True).scope():
        fresh = _model(sharing=True)

    tf.train.Checkpoint(model=fresh).restore(
        path
    ).assert_existing_objects_matched()

    _assert_same_weights(fresh.get_weights(), model.get_weights())
    _assert_teacher_is_pretrained(fresh)
    _fit(fresh)
    _assert_teacher_is_pretrained(fresh)


def test_saved_model_of_the_wrapper_saves_its_models_weights(tmp_path):
    # TensorFlow's SavedModel follows the dependencies that checkpoints
    # follow, without the teacher's stand-ins for the weights it shares.
    model = _model(sharing=True)
    _fit(model)
    path = str(tmp_path / "saved_model")

    tf.saved_model.save(model, path)

    tf.saved_model.load(path)
    reader = tf.train.load_checkpoint(f"{path}/variables/variables")
    keys = [
        key
        for key in reader.get_variable_to_shape_map()
        if key.startswith(("student/", "teacher/"))
    ]
    assert keys
    weights = model.get_weights()
    for key in keys:
        value = reader.get_tensor(key)
        assert any(np.array_equal(value, w) for w in weights), key


def _trained_with(callback, *, sharing):
    model = _model(sharing=sharing)
    _train_then_unfreeze(model, callbacks=[callback])
    return model


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("weights_only", [True, False])
def test_model_checkpoint_loads_as_the_trained_model(
    sharing, weights_only, tmp_path
):
    path = str(tmp_path / ("sft.weights.h5" if weights_only else "sft.keras"))
    model = _trained_with(
        keras.callbacks.ModelCheckpoint(path, save_weights_only=weights_only),
        sharing=sharing,
    )

    if weights_only:
        loaded = _model(sharing=sharing)
        loaded.load_weights(path)
    else:
        loaded = keras.models.load_model(path)

    _assert_same_weights(loaded.get_weights(), model.get_weights())
    _assert_teacher_is_pretrained(loaded)


@pytest.mark.parametrize(
    "backup", [keras.callbacks.BackupAndRestore, keras_sft.BackupAndRestore]
)
def test_backup_of_an_unfrozen_run_resumes_as_without_sharing(backup, tmp_path):
    trained = {}
    for sharing in SHARING:
        backup_dir = str(tmp_path / f"backup-{sharing}")
        _trained_with(
            backup(backup_dir, delete_checkpoint=False), sharing=sharing
        )
        # A rerun builds the model frozen again; the backup restores the
        # unfrozen layer's values into it, then one more epoch trains.
        resumed = _model(sharing=sharing)
        _fit(resumed, epochs=2, callbacks=[backup(backup_dir)])
        _assert_teacher_is_pretrained(resumed)
        trained[sharing] = resumed.get_weights()

    helpers.assert_close_across_op_orders(
        trained[True], trained[False], dtype="float32", terms=16
    )


@pytest.mark.slow
def test_backup_resumes_under_a_mirrored_strategy_as_on_one_device(tmp_path):
    trained = {}
    for name in ("one", "mirrored"):
        strategy = (
            helpers.two_cpu_strategy(through_one_device=True)
            if name == "mirrored"
            else None
        )
        backup_dir = str(tmp_path / f"backup-{name}")
        _trained_with(
            keras_sft.BackupAndRestore(backup_dir, delete_checkpoint=False),
            sharing=True,
        )
        if strategy is None:
            resumed = _model(sharing=True)
        else:
            with strategy.scope():
                resumed = _model(sharing=True)
        _fit(
            resumed,
            epochs=2,
            callbacks=[keras_sft.BackupAndRestore(backup_dir)],
        )
        assert not _shares(resumed)
        _assert_teacher_is_pretrained(resumed)
        trained[name] = resumed.get_weights()

    helpers.assert_close_across_op_orders(
        trained["mirrored"], trained["one"], dtype="float32", terms=16
    )
