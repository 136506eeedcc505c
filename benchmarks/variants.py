"""The models, data and compiled variants that the benchmarks time.

Shared by `throughput.py`, `whole_fit.py` and `gpu.py` so that every table
times the same students and the same objectives:

- `plain`: the student's `fit` with cross-entropy only;
- `l2_sp`: the same with `keras_sft.apply_l2_sp`;
- `distiller`: `keras.distillation.Distiller` with MSE on the outputs,
  weighted as SFT's objective (see `compiled`);
- `sft_live` and `sft_cached`: `keras_sft.SFTModel`, the second fed the
  teacher's outputs (`examples`) or at its defaults on arrays;
- `sft_unguarded`: `sft_live` without the non-finite step guard;
- `sft_keras_adam`: `sft_live` with Keras's Adam update as Keras runs it
  (eleven kernels per weight), not fused into TensorFlow's one kernel as
  `SFTModel` runs it on one device without XLA;
- `sft_bfloat16`, `sft_float16` and `sft_int8`: `sft_live` with the
  teacher in that precision (`teacher_dtype`).

No flags here: the binaries that import this module define their own.
"""

import time

LAMBDA = 0.5
# Widths of the three stages of `resnet`'s residual blocks.
RESNET_WIDTHS = (64, 128, 256)
INPUT_SHAPES = {
    "mlp": (784,),
    "cnn": (32, 32, 3),
    "resnet": (32, 32, 3),
    "frozen_cnn": (32, 32, 3),
}
# Widths of `frozen_cnn`'s backbone convolutions.
FROZEN_CNN_WIDTHS = (32, 64, 128)


def build(model_name, seed=0):
    """The pretrained classifier (random weights: speed does not care).

    `mlp` is the textbook example's 784-256-10, `cnn` a small two-layer
    CNN on 32x32x3, `resnet` the residual CNN of `resnet()`,
    `frozen_cnn` the transfer-learning case of `frozen_cnn()`. The head is
    float32 so that under a mixed precision policy the logits, the loss
    and the teacher's cached outputs stay float32; under the float32
    policy this changes nothing.
    """
    import keras

    if model_name == "resnet":
        return resnet()
    if model_name == "frozen_cnn":
        return frozen_cnn()
    init = keras.initializers.GlorotUniform
    if model_name == "mlp":
        inputs = keras.Input(INPUT_SHAPES["mlp"])
        hidden = keras.layers.Dense(256, "relu", kernel_initializer=init(seed))(
            inputs
        )
    else:
        inputs = keras.Input(INPUT_SHAPES["cnn"])
        hidden = inputs
        for i, filters in enumerate((32, 64)):
            hidden = keras.layers.Conv2D(
                filters, 3, activation="relu", kernel_initializer=init(seed + i)
            )(hidden)
            hidden = keras.layers.MaxPooling2D()(hidden)
        hidden = keras.layers.Flatten()(hidden)
        hidden = keras.layers.Dense(128, "relu", kernel_initializer=init(seed))(
            hidden
        )
    outputs = keras.layers.Dense(
        10, kernel_initializer=init(seed + 7), dtype="float32"
    )(hidden)
    return keras.Model(inputs, outputs, name=model_name)


def resnet(widths=RESNET_WIDTHS):
    """A residual CNN on 32x32x3 with batch normalization.

    A stem convolution, then one basic block (two 3x3 convolutions and a
    shortcut) per stage, each stage after the first halving the
    resolution. With the default widths: 1.2M weights and about 0.4
    GFLOPs per example forward, a GPU-sized step at batch 256 whose graph
    still compiles in seconds. Weights come from Keras's global seed.
    """
    import keras
    from keras import layers

    def normalized(x, filters, kernel_size, strides=1):
        x = layers.Conv2D(
            filters, kernel_size, strides, padding="same", use_bias=False
        )(x)
        return layers.BatchNormalization()(x)

    inputs = keras.Input(INPUT_SHAPES["resnet"])
    x = layers.Activation("relu")(normalized(inputs, widths[0], 3))
    for stage, filters in enumerate(widths):
        strides = 1 if stage == 0 else 2
        residual = layers.Activation("relu")(normalized(x, filters, 3, strides))
        residual = normalized(residual, filters, 3)
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = normalized(x, filters, 1, strides)
        x = layers.Activation("relu")(layers.Add()([residual, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet")


def frozen_cnn(widths=FROZEN_CNN_WIDTHS):
    """A frozen convolutional backbone under a trainable Dense head.

    Three 3x3 convolutions with batch normalization (the last two at half
    the resolution of the one before), global pooling, then the head: the
    backbone holds almost every FLOP (10M multiply-adds per example
    forward, the head 1.3k) and has `trainable=False`, as when a
    pretrained model's new head is trained alone.
    """
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPES["frozen_cnn"])
    x = inputs
    for stage, filters in enumerate(widths):
        x = layers.Conv2D(
            filters, 3, 1 if stage == 0 else 2, padding="same", use_bias=False
        )(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
    features = layers.GlobalAveragePooling2D()(x)
    backbone = keras.Model(inputs, features, name="backbone")
    backbone.trainable = False
    outputs = layers.Dense(10, dtype="float32")(backbone(inputs))
    return keras.Model(inputs, outputs, name="frozen_cnn")


def weight_bytes(model):
    """`(teacher_owned, trainable)`: the bytes of the variables the
    teacher of `model` (an `SFTModel` or a Distiller) holds apart from
    its student's, and of the student's trainable variables."""
    from keras_sft import _shared_teacher

    def size(weights):
        return sum(w.numpy().nbytes for w in weights)

    owned = _shared_teacher.owned_weights(model.student, model.teacher)
    return size(owned), size(model.student.trainable_weights)


def arrays(model_name, count, seed=0):
    """Synthetic `(x, y)` NumPy arrays of `count` examples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.random(size=(count, *INPUT_SHAPES[model_name]), dtype="float32")
    y = rng.integers(0, 10, size=count).astype("int32")
    return x, y


def compiled(student, variant, *, cache_teacher=None, **compile_kwargs):
    """`variant` of `student`, compiled with Adam and `compile_kwargs`.

    `cache_teacher` is `SFTModel`'s argument for the `sft_*` variants;
    None leaves its default. `sft_unguarded` is `sft_live` without the
    non-finite step guard; `sft_keras_adam` is `sft_live` with Keras's
    Adam update unfused; `sft_bfloat16`, `sft_float16` and `sft_int8`
    run the teacher in that precision. The Distiller computes
    `w * task + (1 - w) * mse`; with `w = 1 / (1 + LAMBDA)` that is SFT's
    `task + LAMBDA * mse` divided by `1 + LAMBDA`, the same objective.
    """
    import keras

    import keras_sft

    task_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if variant in ("plain", "l2_sp"):
        model = student
        if variant == "l2_sp":
            keras_sft.apply_l2_sp(model, alpha=0.01)
    elif variant == "distiller":
        model = keras.distillation.Distiller(
            teacher=keras_sft.clone_teacher(student),
            student=student,
            distillation_losses=keras.distillation.FeatureDistillation(
                loss="mse"
            ),
            student_loss_weight=1 / (1 + LAMBDA),
        )
    else:
        options = (
            {} if cache_teacher is None else {"cache_teacher": cache_teacher}
        )
        precision = variant.removeprefix("sft_")
        if precision in keras_sft.teacher.TEACHER_DTYPES:
            options["teacher_dtype"] = precision
        # "mse", the Distiller's distance, whatever SFTModel's default.
        model = keras_sft.SFTModel(
            student,
            lambda_=LAMBDA,
            distance="mse",
            guard_nonfinite=variant != "sft_unguarded",
            **options,
        )
        task_loss = None
    optimizer = keras.optimizers.Adam(1e-3)
    if variant == "sft_keras_adam":
        optimizer = _unfused_adam(1e-3)
    model.compile(optimizer=optimizer, loss=task_loss, **compile_kwargs)
    return model


def _unfused_adam(learning_rate):
    """Keras's Adam, whose update `SFTModel` leaves unfused: it fuses
    Keras's own `Adam.update_step`, not a subclass's."""
    import keras

    class KerasAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)

    return KerasAdam(learning_rate)


def examples(model, variant, data):
    """The unbatched `tf.data.Dataset` that `variant` trains on.

    `data` is `(x, y)`. For `sft_cached`, `data` with the teacher's
    outputs (`keras_sft.cache_teacher_outputs`). Returns the dataset and
    the seconds of the cache's one pass (None for the other variants).
    """
    import tensorflow as tf

    import keras_sft

    if variant != "sft_cached":
        return tf.data.Dataset.from_tensor_slices(data), None
    start = time.perf_counter()
    cached = keras_sft.cache_teacher_outputs(model.teacher, data)
    return cached, time.perf_counter() - start
