"""Tests for keras_sft._shared_teacher: teachers sharing frozen weights."""

import copy as copy_module
import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sft
from keras_sft import _shared_teacher
from tests import helpers


def lora_model():
    """A model with a layer of each kind Keras can adapt with LoRA."""
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.Reshape((16, 4))(h)
    h = keras.layers.EinsumDense("abc,cd->abd", (16, 5), name="einsum")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu", name="dense")(h)
    ids = keras.ops.cast(keras.ops.abs(h[:, :3]) * 4, "int32") % 7
    e = keras.layers.Flatten()(keras.layers.Embedding(7, 2, name="embed")(ids))
    h = keras.layers.Concatenate()([h, e])
    outputs = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inputs, outputs)


ADAPTED = ("conv", "einsum", "dense", "embed")


def images(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 2)).astype("float32")
    return x, rng.integers(0, 3, size=n).astype("int32")


def with_lora(model):
    """Enables LoRA on every adaptable layer; returns the base kernels."""
    for name in ADAPTED:
        model.get_layer(name).enable_lora(2)
    return [base_kernel(model.get_layer(name)) for name in ADAPTED]


def base_kernel(layer):
    return getattr(layer, "_kernel", getattr(layer, "_embeddings", None))


def outputs(model, x):
    # `student.predict` would reuse a function traced before `enable_lora`.
    return keras.ops.convert_to_numpy(model(x, training=False))


def fit(model, x, y, epochs=2):
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)


def test_lora_teacher_shares_base_kernels_and_predicts_as_before():
    student = lora_model()
    x, y = images()
    pretrained = outputs(student, x)
    full = _shared_teacher.owned_weights(
        student, keras_sft.clone_teacher(student)
    )
    bases = with_lora(student)
    model = keras_sft.SFTModel(student, lambda_=1.0, cache_teacher=False)

    owned = _shared_teacher.owned_weights(student, model.teacher)
    assert all(
        w is base_kernel(model.teacher.get_layer(n))
        for w, n in zip(bases, ADAPTED, strict=True)
    )
    assert not any(w.name.startswith("lora_") for w in model.teacher.weights)
    owned_bytes = sum(np.prod(w.shape) for w in owned)
    full_bytes = sum(np.prod(w.shape) for w in full)
    assert owned_bytes == full_bytes - sum(np.prod(w.shape) for w in bases)
    np.testing.assert_array_equal(outputs(model.teacher, x), pretrained)

    values = [keras.ops.convert_to_numpy(w) for w in bases]
    fit(model, x, y)
    assert not np.allclose(outputs(student, x), pretrained)
    np.testing.assert_array_equal(outputs(model.teacher, x), pretrained)
    for base, value in zip(bases, values, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(base), value)


@pytest.mark.slow
def test_trained_lora_adapters_give_a_full_copy():
    student = lora_model()
    with_lora(student)
    dense = student.get_layer("dense")
    dense.lora_kernel_b.assign(np.full(dense.lora_kernel_b.shape, 0.1))
    x, _ = images()

    teacher = _shared_teacher.shared_teacher(student)

    assert all(
        w is not dense._kernel for w in teacher.get_layer("dense").weights
    )
    np.testing.assert_allclose(
        outputs(teacher, x),
        outputs(student, x),
        atol=1e-6,
    )


@pytest.mark.slow
def test_lora_teacher_survives_load_weights_and_saving(tmp_path):
    student = lora_model()
    x, y = images()
    pretrained = outputs(student, x)
    with_lora(student)
    model = keras_sft.SFTModel(student, lambda_=1.0, cache_teacher=False)
    fit(model, x, y, epochs=1)
    trained = outputs(student, x)
    path = str(tmp_path / "sft.weights.h5")
    model.save_weights(path)
    fit(model, x, y, epochs=1)

    model.load_weights(path)

    np.testing.assert_allclose(outputs(student, x), trained, atol=1e-5)
    np.testing.assert_array_equal(outputs(model.teacher, x), pretrained)
    loaded = helpers.keras_round_trip(model, tmp_path)
    np.testing.assert_array_equal(outputs(loaded.teacher, x), pretrained)


def test_frozen_backbone_teacher_owns_only_the_trainable_weights():
    student = helpers.frozen_backbone_cnn()
    x, y = images()
    pretrained = outputs(student, x)
    frozen = [keras.ops.convert_to_numpy(w) for w in student.weights]

    model = keras_sft.SFTModel(student, lambda_=1.0, cache_teacher=False)

    owned = _shared_teacher.owned_weights(student, model.teacher)
    assert sorted(w.path for w in owned) == ["head/bias", "head/kernel"]
    fit(model, x, y)
    np.testing.assert_array_equal(outputs(model.teacher, x), pretrained)
    backbone = student.get_layer("backbone")
    for weight, value in zip(backbone.weights, frozen, strict=False):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)


@pytest.mark.parametrize("unfreeze", ["student", "wrapper"])
def test_unfreezing_gives_the_teacher_its_own_copies(unfreeze):
    student = helpers.mlp()
    x, y, _ = helpers.classification_data()
    weights = student.get_weights()
    student.layers[1].trainable = False
    model = keras_sft.SFTModel(student, lambda_=1.0, cache_teacher=False)
    fit(model, x, y, epochs=1)
    assert student.layers[1].kernel is model.teacher.layers[1].kernel
    model.teacher.predict(x, verbose=0)

    if unfreeze == "student":
        student.layers[1].trainable = True
    else:
        model.trainable = False
        model.trainable = True
    fit(model, x, y)

    assert student.layers[1].trainable
    assert not np.allclose(student.get_weights()[0], weights[0])
    np.testing.assert_allclose(
        model.teacher.predict(x, verbose=0),
        helpers.numpy_mlp_logits(weights, x),
        atol=1e-5,
    )
    assert _shared_teacher.owned_weights(student, model.teacher) == (
        model.teacher.weights
    )
    assert model.teacher.trainable_weights == []


# Writes to the student outside `SFTModel`: copy on write.


def frozen_mlp():
    """`helpers.mlp()` with its hidden layer frozen, and its weights."""
    student = helpers.mlp()
    student.layers[1].trainable = False
    return student, student.get_weights()


def sft(student):
    return keras_sft.SFTModel(
        student, lambda_=1.0, distance="mse", cache_teacher=False
    )


def write(kind, student, weights, tmp_path):
    """Writes `weights` into `student` as a user would, without `SFTModel`."""
    if kind == "set_weights":
        student.set_weights(weights)
    elif kind == "load_weights":
        source = keras.models.clone_model(student)
        source.set_weights(weights)
        path = str(tmp_path / "other.weights.h5")
        source.save_weights(path)
        student.load_weights(path)
    else:
        for variable, value in zip(student.weights, weights, strict=True):
            variable.assign(value)


@pytest.mark.parametrize("kind", ["set_weights", "load_weights", "assign"])
def test_student_writes_leave_the_teacher_pretrained(kind, tmp_path):
    student, pretrained = frozen_mlp()
    other = helpers.mlp(seed=5).get_weights()
    x, y, _ = helpers.classification_data()
    model = sft(student)
    kernel = student.layers[1].kernel
    assert model.teacher.layers[1].kernel is kernel
    # Functions traced before the write (the training step computing the
    # shared hidden layer once for both models) read the student's
    # variable; a zero learning rate keeps the weights.
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    model.teacher.predict(x, verbose=0)

    write(kind, student, other, tmp_path)

    assert model.teacher.layers[1].kernel is not kernel
    np.testing.assert_allclose(
        model.teacher.predict(x, verbose=0),
        helpers.numpy_mlp_logits(pretrained, x),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        outputs(student, x), helpers.numpy_mlp_logits(other, x), atol=1e-5
    )
    for actual, expected in zip(
        model.get_weights(), other + pretrained, strict=True
    ):
        np.testing.assert_array_equal(actual, expected)
    # The consistency term compares the new student with the pretrained
    # model.
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    distill = np.mean(
        (
            helpers.numpy_mlp_logits(pretrained, x)
            - helpers.numpy_mlp_logits(other, x)
        )
        ** 2
    )
    assert history.history["distill_loss"][0] == pytest.approx(
        distill, rel=1e-5
    )


def test_writes_of_the_value_held_keep_the_weights_shared(tmp_path):
    student, pretrained = frozen_mlp()
    model = sft(student)
    kernel = student.layers[1].kernel
    path = tf.train.Checkpoint(model=student).write(str(tmp_path / "own"))

    student.set_weights(pretrained)
    model.set_weights(model.get_weights())
    kernel.value.assign_add(np.zeros(kernel.shape, "float32"))
    kernel.value.assign_sub(delta=np.zeros(kernel.shape, "float32"))
    kernel.value.scatter_add(tf.IndexedSlices(np.zeros((1, 8), "float32"), [2]))
    tf.train.Checkpoint(model=student).read(path).assert_consumed()

    assert model.teacher.layers[1].kernel is kernel
    # `SFTModel.set_weights` shared it again, watched as before.
    student.set_weights(helpers.mlp(seed=5).get_weights())
    assert model.teacher.layers[1].kernel is not kernel
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.teacher.layers[1].kernel),
        pretrained[0],
    )
    # Unshared, the variable is no longer watched.
    assert not {"assign", "assign_sub", "scatter_sub"} & set(vars(kernel.value))


def test_a_deep_copy_of_a_shared_variable_writes_to_itself():
    student, pretrained = frozen_mlp()
    model = sft(student)
    kernel = student.layers[1].kernel

    copy = copy_module.deepcopy(kernel)
    copy.assign(np.zeros(kernel.shape))

    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copy), 0.0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(kernel), pretrained[0]
    )
    assert model.teacher.layers[1].kernel is kernel


def test_a_deep_copy_of_a_sharing_teacher_layer_checkpoints_its_own():
    student, _ = frozen_mlp()
    layer = sft(student).teacher.layers[1]

    copy = copy_module.deepcopy(layer)

    children = copy._trackable_children()
    assert children["_kernel"] is copy.kernel
    assert copy.kernel is not layer.kernel


def test_two_models_on_one_student_each_keep_their_teacher():
    student, pretrained = frozen_mlp()
    x, _, _ = helpers.classification_data()
    first, second = sft(student), sft(student)
    kernel = student.layers[1].kernel
    assert first.teacher.layers[1].kernel is kernel
    assert second.teacher.layers[1].kernel is kernel

    student.set_weights(helpers.mlp(seed=5).get_weights())

    for model in (first, second):
        assert model.teacher.layers[1].kernel is not kernel
        np.testing.assert_allclose(
            outputs(model.teacher, x),
            helpers.numpy_mlp_logits(pretrained, x),
            atol=1e-5,
        )
    assert first.teacher.layers[1].kernel is not (
        second.teacher.layers[1].kernel
    )


def test_traced_moving_statistics_updates_leave_the_teacher_pretrained():
    student = helpers.frozen_backbone_cnn()
    x, _ = images()
    model = sft(student)
    bn = student.get_layer("backbone").get_layer("bn")
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    assert model.teacher.get_layer("backbone").get_layer("bn").moving_mean is (
        bn.moving_mean
    )
    bn.trainable = True

    # Traced: the copy is made while the update is, before it runs.
    tf.function(lambda x: student(x, training=True))(x)

    teacher_bn = model.teacher.get_layer("backbone").get_layer("bn")
    assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(teacher_bn.moving_mean), mean
    )


def test_moving_statistics_updated_in_mirrored_steps_leave_the_teacher():
    strategy = helpers.two_cpu_strategy()
    with strategy.scope():
        student = helpers.frozen_backbone_cnn()
        model = sft(student)
        # A zero learning rate: only the moving statistics change.
        student.compile(
            optimizer=keras.optimizers.SGD(0.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    x, y = images()
    bn = student.get_layer("backbone").get_layer("bn")
    mean = keras.ops.convert_to_numpy(bn.moving_mean)
    bn.trainable = True

    # Each replica's traced update meets the hook; one copy is made.
    student.fit(x, y, batch_size=8, epochs=1, verbose=0)

    teacher_bn = model.teacher.get_layer("backbone").get_layer("bn")
    assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), mean)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(teacher_bn.moving_mean), mean
    )


def test_the_student_does_not_keep_its_sft_model_alive():
    student, _ = frozen_mlp()
    model = sft(student)
    references = [weakref.ref(model), weakref.ref(model.teacher)]

    del model
    gc.collect()

    assert [r() for r in references] == [None, None]
    student.set_weights(helpers.mlp(seed=5).get_weights())


def unfreeze_and_fit(student, optimizer, x, y):
    """Unfreezes the hidden layer on `student` alone and trains it."""
    student.layers[1].trainable = True
    student.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    student.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)


@pytest.mark.parametrize(
    "optimizer", [keras.optimizers.SGD, keras.optimizers.Adam]
)
def test_student_fit_after_unfreezing_on_the_student_alone(optimizer):
    student, pretrained = frozen_mlp()
    reference = keras.models.clone_model(student)
    reference.set_weights(pretrained)
    x, y, _ = helpers.classification_data()
    model = sft(student)
    kernel = student.layers[1].kernel

    # The optimizer writes the `tf.Variable` behind the Keras one; the
    # copy is made while the training step is traced.
    unfreeze_and_fit(student, optimizer(0.1), x, y)
    unfreeze_and_fit(reference, optimizer(0.1), x, y)

    assert model.teacher.layers[1].kernel is not kernel
    helpers.assert_same_trained_weights(
        student.get_weights(), reference.get_weights(), pretrained
    )
    np.testing.assert_allclose(
        outputs(model.teacher, x),
        helpers.numpy_mlp_logits(pretrained, x),
        atol=1e-5,
    )


def test_student_fit_after_unfreezing_in_mirrored_steps_leaves_the_teacher():
    strategy = helpers.two_cpu_strategy()
    x, y, _ = helpers.classification_data()
    with strategy.scope():
        student, pretrained = frozen_mlp()
        model = sft(student)

        # Each replica's update of its component is traced in the update
        # context of the strategy; the first makes the mirrored copy.
        unfreeze_and_fit(student, keras.optimizers.SGD(0.1), x, y)

    kernel = model.teacher.layers[1].kernel
    assert kernel is not student.layers[1].kernel
    assert not np.allclose(
        keras.ops.convert_to_numpy(student.layers[1].kernel), pretrained[0]
    )
    for component in strategy.experimental_local_results(kernel.value):
        np.testing.assert_array_equal(component.numpy(), pretrained[0])
    np.testing.assert_allclose(
        outputs(model.teacher, x),
        helpers.numpy_mlp_logits(pretrained, x),
        atol=1e-5,
    )


def test_sparse_updates_of_an_unfrozen_embedding_leave_the_teacher():
    inputs = keras.Input((3,), dtype="int32")
    h = keras.layers.Embedding(
        10, 4, embeddings_initializer=keras.initializers.RandomNormal(seed=0)
    )(inputs)
    outputs_ = keras.layers.Dense(3)(keras.layers.Flatten()(h))
    student = keras.Model(inputs, outputs_)
    student.layers[1].trainable = False
    embeddings, w, b = student.get_weights()
    ids = np.random.default_rng(0).integers(0, 10, size=(16, 3))
    y = np.arange(16) % 3
    model = sft(student)

    # Keras's SGD writes the gradient of a gather, `tf.IndexedSlices`,
    # with `scatter_sub` (Keras 3.15).
    unfreeze_and_fit(student, keras.optimizers.SGD(0.1), ids, y)

    assert not np.allclose(student.get_weights()[0], embeddings)
    np.testing.assert_allclose(
        outputs(model.teacher, ids),
        embeddings[ids].reshape(16, 12) @ w + b,
        atol=1e-5,
    )


@pytest.mark.parametrize("mirrored", [False, True])
def test_checkpoint_restored_into_the_student_alone(mirrored, tmp_path):
    other = helpers.mlp(seed=5)
    path = tf.train.Checkpoint(model=other).write(str(tmp_path / "other"))
    x, _, _ = helpers.classification_data()
    strategy = (
        helpers.two_cpu_strategy() if mirrored else tf.distribute.get_strategy()
    )
    with strategy.scope():
        student, pretrained = frozen_mlp()
        model = sft(student)
    kernel = student.layers[1].kernel

    tf.train.Checkpoint(model=student).read(path).assert_consumed()

    assert model.teacher.layers[1].kernel is not kernel
    for component in strategy.experimental_local_results(
        model.teacher.layers[1].kernel.value
    ):
        np.testing.assert_array_equal(component.numpy(), pretrained[0])
    np.testing.assert_allclose(
        outputs(model.teacher, x),
        helpers.numpy_mlp_logits(pretrained, x),
        atol=1e-5,
    )
    for actual, expected in zip(
        student.get_weights(), other.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(actual, expected)
