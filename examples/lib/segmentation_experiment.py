"""The segmentation forgetting experiment, importable (no flags).

A small fully convolutional network is pretrained on an old task, then
fine-tuned on a new task twice from the same weights: plainly
(`lambda_=0`) and with SFT's consistency term. Both are scored on the old
and the new task with mean IoU and pixel accuracy. `examples.segmentation`
is the command line around it (`presets.SEGMENTATION` its defaults).

- `digits` (offline): old task, scenes of digits 0-4; new task, digits 5-9
  (`segmentation_data.digit_scenes`, 11 classes with the
  background).
- `oxford_iiit_pet` (TFDS): old task, cats; new task, dogs; 3 classes (pet,
  background, border).
"""

import keras
import numpy as np
import tensorflow as tf

import keras_sft
from examples.lib import segmentation_data
from keras_sft.teacher import copy_model

OLD_DIGITS = (0, 1, 2, 3, 4)
NEW_DIGITS = (5, 6, 7, 8, 9)


def build_segmenter(input_shape, classes, *, seed=0):
    """A fully convolutional network with per-pixel logits.

    Dilated 3x3 convolutions (rates 1, 2, 4) see a 15x15 window, enough for
    a whole 8x8 digit, at full resolution.

    Args:
        input_shape: Tuple `(height, width, channels)`.
        classes: Int, the number of classes.
        seed: Int, seed of the initial weights. Defaults to `0`.

    Returns:
        A `keras.Model` from images to logits `(batch, H, W, classes)`.
    """
    inputs = keras.Input(input_shape)
    hidden = inputs
    for i, (filters, rate) in enumerate(((16, 1), (32, 2), (32, 4))):
        hidden = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            dilation_rate=rate,
            activation="relu",
            kernel_initializer=keras.initializers.HeUniform(seed + i),
        )(hidden)
    outputs = keras.layers.Conv2D(
        classes,
        1,
        kernel_initializer=keras.initializers.GlorotUniform(seed + 3),
        name="segmentation",
    )(hidden)
    return keras.Model(inputs, outputs, name="segmenter")


def digit_tasks(*, image_size=16, seed=0):
    """Old and new digit-scene tasks, 70% to train and 30% to test.

    Args:
        image_size: Int >= 8, the canvas side. Defaults to `16`.
        seed: Int, seed of the scenes and of the split. Defaults to `0`.

    Returns:
        A dict with `old_train`, `new_train`, `old_test`, `new_test`
        (unbatched datasets of known size), `classes` and `input_shape`.
    """
    tasks = {
        "classes": segmentation_data.DIGIT_CLASSES,
        "input_shape": (image_size, image_size, 1),
    }
    for name, digits in (("old", OLD_DIGITS), ("new", NEW_DIGITS)):
        images, masks = segmentation_data.digit_scenes(
            digits, image_size=image_size, seed=seed
        )
        order = np.random.default_rng(seed).permutation(len(images))
        cut = int(0.7 * len(images))
        train, test = order[:cut], order[cut:]
        for split, rows in (("train", train), ("test", test)):
            tasks[f"{name}_{split}"] = tf.data.Dataset.from_tensor_slices(
                (images[rows], masks[rows])
            )
    return tasks


def pet_tasks(*, image_size=64, data_dir=None):
    """Old (cats) and new (dogs) tasks from TFDS `oxford_iiit_pet`.

    The TFDS `train` split trains and `test` tests.

    Args:
        image_size: Int > 0, the side of the resized images. Defaults to
            `64`.
        data_dir: String or `None`, the TFDS data directory. Defaults to
            `None`.

    Returns:
        A dict as `digit_tasks` returns.
    """
    name = "oxford_iiit_pet"
    tasks = {
        "classes": segmentation_data.TFDS_SETS[name][0],
        "input_shape": (image_size, image_size, 3),
    }
    for task, species in (("old", 0), ("new", 1)):
        for split in ("train", "test"):
            dataset = segmentation_data.tfds_segmentation(
                name,
                split,
                image_size=image_size,
                data_dir=data_dir,
                species=species,
            )
            # Filtering by species hides the size, and Keras warns at the
            # end of each epoch of a dataset of unknown size; count it once
            # (which also fills the cache).
            dataset = dataset.cache()
            size = int(dataset.reduce(0, lambda count, _: count + 1))
            tasks[f"{task}_{split}"] = dataset.apply(
                tf.data.experimental.assert_cardinality(size)
            )
    return tasks


def _batches(dataset, batch_size, *, seed=None):
    """Batches `dataset`, shuffled afresh from `seed` when one is given.

    A new shuffle per fit gives every fine-tuning the same order of
    examples, epoch by epoch, whatever ran before it.
    """
    if seed is not None:
        dataset = dataset.shuffle(int(dataset.cardinality()), seed=seed)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _fit(build, dataset, *, epochs, config, strategy, **compile_kwargs):
    """Builds a model with `build` under `strategy`, fits it on `dataset`."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build()
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            jit_compile=config.jit_compile,
            **compile_kwargs,
        )
    model.fit(
        _batches(dataset, config.batch_size, seed=config.seed),
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    return model


def segmentation_quality(model, dataset, classes):
    """Mean IoU over classes and pixel accuracy of `model` on `dataset`.

    Mean IoU is Keras's `MeanIoU`: the mean, over the classes that occur in
    the labels or the predictions, of intersection over union.

    Returns:
        A dict with float `mean_iou` and `pixel_accuracy`.
    """
    mean_iou = keras.metrics.MeanIoU(classes, sparse_y_pred=False)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    for images, masks in dataset:
        logits = model(images, training=False)
        mean_iou.update_state(masks, logits)
        accuracy.update_state(masks, logits)
    return {
        "mean_iou": float(mean_iou.result()),
        "pixel_accuracy": float(accuracy.result()),
    }


def run_experiment(
    tasks,
    *,
    lambdas,
    pretrain_epochs,
    config,
    distance="mse",
    strategy=None,
):
    """Pretrains on the old task, fine-tunes on the new one, scores all.

    Args:
        tasks: Dict from `digit_tasks` or `pet_tasks`.
        lambdas: Floats > 0, SFT's weights of the consistency term, one
            fine-tuning each, after the plain one (`lambda_=0`).
        pretrain_epochs: Int, epochs on the old task.
        config: `TrainingConfig`: the epochs of each fine-tuning on the new
            task, and the batch size, learning rate, seed and XLA choice of
            all training.
        distance: String, SFT's distance (`"mse"`, `"squared_l2"`, `"kl"`).
            Defaults to `"mse"`.
        strategy: A `tf.distribute.Strategy` or `None` for the default.
            Defaults to `None`.

    Returns:
        A list of dicts, one per model (`"pretrained"`, plain fine-tuning,
        then SFT for each of `lambdas`), with `method` and the old and new
        task's `mean_iou` and `pixel_accuracy`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    classes = tasks["classes"]
    pretrained = _fit(
        lambda: build_segmenter(
            tasks["input_shape"], classes, seed=config.seed
        ),
        tasks["old_train"],
        epochs=pretrain_epochs,
        config=config,
        strategy=strategy,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    models = [("pretrained", pretrained)]
    runs = [("plain fine-tuning (lambda=0)", 0.0)]
    runs += [(f"SFT (lambda={weight:g})", weight) for weight in lambdas]
    for method, weight in runs:
        model = _fit(
            lambda weight=weight: keras_sft.SFTModel(
                copy_model(pretrained), lambda_=weight, distance=distance
            ),
            tasks["new_train"],
            epochs=config.epochs,
            config=config,
            strategy=strategy,
        )
        models.append((method, model.student))

    rows = []
    for method, model in models:
        row = {"method": method}
        for task in ("old", "new"):
            quality = segmentation_quality(
                model,
                _batches(tasks[f"{task}_test"], config.batch_size),
                classes,
            )
            for key, value in quality.items():
                row[f"{task}_{key}"] = value
        rows.append(row)
    return rows


def format_table(rows):
    """The rows of `run_experiment` as a Markdown table."""
    lines = [
        "| model | old-task mean IoU | old-task pixel acc. "
        "| new-task mean IoU | new-task pixel acc. |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['old_mean_iou']:.3f} "
            f"| {row['old_pixel_accuracy']:.3f} | {row['new_mean_iou']:.3f} "
            f"| {row['new_pixel_accuracy']:.3f} |"
        )
    return "\n".join(lines)
