"""The segmentation forgetting experiment, importable (no flags).

A small fully convolutional network is pretrained on an old task, then
fine-tuned on a new task from the same weights: plainly (`lambda_=0`),
with SFT's consistency term for each lambda, with L2-SP for each alpha,
and with SFT's term on anchors (unlabeled pretraining scenes) for each
anchor lambda. Every model is scored on the old and the new task with
mean IoU and pixel accuracy. `examples.segmentation` is the command line
around it (`presets.SEGMENTATION` its defaults).

- `digits` (offline, `segmentation_data.digit_scenes`), in one of
  `SCENARIOS`:
  - `shared_head`: old task digits 0-4, new task digits 5-9, one head of
    11 classes (the background and ten digits). The pretrained model
    answers an old class on the new digits' pixels, so the consistency
    term opposes every new label.
  - `new_head`: the same tasks, Learning without Forgetting's way: the
    old head has 6 classes (the background and 0-4), and the student
    grows a new per-pixel head of 6 (the background and 5-9,
    `keras_sft.add_head`); the term keeps the old head alone.
  - `new_domain`: the same classes (the background and 0-4) on the same
    scenes inverted (`1 - image`: a bright background, dark digits).
- `oxford_iiit_pet` (TFDS): old task, cats; new task, dogs; 3 classes (pet,
  background, border) in one head.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_sft
from benchmarks.experiments import segmentation_data
from examples.lib import arrays
from examples.lib import console
from keras_sft.teacher import copy_model

OLD_DIGITS = (0, 1, 2, 3, 4)
NEW_DIGITS = (5, 6, 7, 8, 9)
SCENARIOS = ("shared_head", "new_head", "new_domain")
DATASETS = ("digits", *segmentation_data.TFDS_SETS)
# The name of the new head's layer and output in the `new_head` scenario.
NEW_HEAD = "new_segmentation"


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


def digit_tasks(*, image_size=16, seed=0, scenario="shared_head"):
    """Old and new digit-scene tasks, 70% to train and 30% to test.

    Args:
        image_size: Int >= 8, the canvas side. Defaults to `16`.
        seed: Int, seed of the scenes and of the split. Defaults to `0`.
        scenario: String, one of `SCENARIOS` (see the module's docstring).
            Defaults to `"shared_head"`.

    Returns:
        A dict with `old_train`, `new_train`, `old_test`, `new_test`
        (unbatched datasets of known size), `classes` (of the pretrained
        head), `new_head_classes` (of the new head, `None` when the new
        task shares the pretrained head) and `input_shape`.
    """
    if scenario not in SCENARIOS:
        raise ValueError(
            "Invalid value for argument `scenario`. Expected one of "
            f"{SCENARIOS}. Received: scenario={scenario!r}"
        )
    old_images, old_masks = segmentation_data.digit_scenes(
        OLD_DIGITS, image_size=image_size, seed=seed
    )
    if scenario == "new_domain":
        # The same scenes, so that the split below keeps each test scene
        # out of both trainings.
        new_images, new_masks = 1.0 - old_images, old_masks
    else:
        new_images, new_masks = segmentation_data.digit_scenes(
            NEW_DIGITS, image_size=image_size, seed=seed
        )
    tasks = {
        "classes": segmentation_data.DIGIT_CLASSES,
        "new_head_classes": None,
        "input_shape": (image_size, image_size, 1),
    }
    if scenario != "shared_head":
        tasks["classes"] = 1 + len(OLD_DIGITS)
    if scenario == "new_head":
        tasks["new_head_classes"] = 1 + len(NEW_DIGITS)
        # The new head counts its digits from 1, as the old one does.
        new_masks = np.where(new_masks > 0, new_masks - len(OLD_DIGITS), 0)
    for name, images, masks in (
        ("old", old_images, old_masks),
        ("new", new_images, new_masks),
    ):
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
        "new_head_classes": None,
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


def tasks(dataset, *, scenario, image_size=None, seed=0, data_dir=None):
    """`digit_tasks` or `pet_tasks`, as `examples.segmentation` names them.

    Args:
        dataset: String, one of `DATASETS`.
        scenario: String, one of `SCENARIOS`; `"shared_head"` for a TFDS set
            (its old and new tasks share their classes and head).
        image_size: Int, the side of the images, or `None`: `16` for the
            digits and `64` for a TFDS set. Defaults to `None`.
        seed: Int, the seed of the digit scenes. Defaults to `0`.
        data_dir: String or `None`, the TFDS data directory. Defaults to
            `None`.

    Returns:
        A dict as `digit_tasks` returns.

    Raises:
        ValueError: for a `dataset` outside `DATASETS`, or a `scenario`
            other than `"shared_head"` with a TFDS set; the message names
            the binary's flags.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"Invalid value for flag --dataset. Expected one of {DATASETS} "
            f"(old task 0-4 and new task 5-9 of digit scenes, or cats and "
            f"dogs). Received: --dataset={dataset}"
        )
    if dataset == "digits":
        return digit_tasks(
            image_size=image_size or 16, seed=seed, scenario=scenario
        )
    if scenario != "shared_head":
        raise ValueError(
            "Invalid value for flag --scenario. Expected 'shared_head' with "
            f"--dataset={dataset} (its old and new tasks, cats and dogs, "
            "share their classes and head). Received: "
            f"--scenario={scenario}"
        )
    return pet_tasks(image_size=image_size or 64, data_dir=data_dir)


def _batches(dataset, batch_size, *, seed=None):
    """Batches `dataset`, shuffled afresh from `seed` when one is given.

    A new shuffle per fit gives every fine-tuning the same order of
    examples, epoch by epoch, whatever ran before it.
    """
    if seed is not None:
        dataset = dataset.shuffle(int(dataset.cardinality()), seed=seed)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _fit(
    build, dataset, *, epochs, config, strategy, anchor_x=None, **compile_kwargs
):
    """Builds a model with `build` under `strategy`, fits it on `dataset`
    (with SFT's consistency term on `anchor_x`, if given)."""
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build()
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            jit_compile=config.jit_compile,
            **compile_kwargs,
        )
    anchors = {} if anchor_x is None else {"anchor_x": anchor_x}
    model.fit(
        _batches(dataset, config.batch_size, seed=config.seed),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        **anchors,
    )
    return model


def fine_tuning_model(
    pretrained, tasks, *, lambda_, distance="mse", l2_sp_alpha=None
):
    """The `SFTModel` that fine-tunes a copy of `pretrained` on `tasks`.

    With a new head (`tasks["new_head_classes"]`), the student is
    `keras_sft.add_head` of the copy, its new head named `NEW_HEAD`, and
    the consistency term is on the pretrained head alone
    (`distill_outputs`): the new head has no teacher to follow.

    Args:
        pretrained: The pretrained segmenter (left unchanged).
        tasks: Dict from `digit_tasks` or `pet_tasks`.
        lambda_: Float >= 0, SFT's weight; `0` is plain fine-tuning.
        distance: String, SFT's distance. Defaults to `"mse"`.
        l2_sp_alpha: Float >= 0, an L2-SP penalty on the pretrained
            weights (`keras_sft.apply_l2_sp`), or `None` for none.
            Defaults to `None`.

    Returns:
        An uncompiled `keras_sft.SFTModel`.
    """
    student = copy_model(pretrained)
    if l2_sp_alpha is not None:
        keras_sft.apply_l2_sp(student, l2_sp_alpha)
    distill_outputs = None
    if tasks["new_head_classes"]:
        student = keras_sft.add_head(
            student, tasks["new_head_classes"], name=NEW_HEAD
        )
        distill_outputs = [student.output_names[0]]
    return keras_sft.SFTModel(
        student,
        lambda_=lambda_,
        distance=distance,
        distill_outputs=distill_outputs,
    )


def _new_task_training(tasks):
    """The new task's training set and compile arguments: a new head's
    labels go to that output alone."""
    if not tasks["new_head_classes"]:
        return tasks["new_train"], {}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dataset = tasks["new_train"].map(lambda x, y: (x, {NEW_HEAD: y}))
    return dataset, {"loss": {NEW_HEAD: loss}}


def segmentation_quality(model, dataset, classes, *, output=None):
    """Mean IoU over classes and pixel accuracy of `model` on `dataset`.

    Mean IoU is Keras's `MeanIoU`: the mean, over the classes that occur in
    the labels or the predictions, of intersection over union.

    Args:
        model: A segmenter.
        dataset: Batched `(image, mask)` pairs.
        classes: Int, the number of classes of the scored output.
        output: Int, the index of the scored output of a multi-output
            `model`, or `None` for a single output. Defaults to `None`.

    Returns:
        A dict with float `mean_iou` and `pixel_accuracy`.
    """
    mean_iou = keras.metrics.MeanIoU(classes, sparse_y_pred=False)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    for images, masks in dataset:
        logits = model(images, training=False)
        if output is not None:
            logits = logits[output]
        mean_iou.update_state(masks, logits)
        accuracy.update_state(masks, logits)
    return {
        "mean_iou": float(mean_iou.result()),
        "pixel_accuracy": float(accuracy.result()),
    }


def _scores(model, tasks, batch_size):
    """The old and new task's scores of `model`, keyed `old_mean_iou`...

    The old task is scored on the pretrained head. With a new head, the
    new task is scored on it, and is `None` for a model without one (the
    pretrained model).
    """
    grown = len(model.outputs) > 1
    heads = {"old": (tasks["classes"], 0 if grown else None)}
    if grown:
        heads["new"] = (tasks["new_head_classes"], 1)
    elif not tasks["new_head_classes"]:
        heads["new"] = (tasks["classes"], None)
    scores = {"new_mean_iou": None, "new_pixel_accuracy": None}
    for task, (classes, output) in heads.items():
        quality = segmentation_quality(
            model,
            _batches(tasks[f"{task}_test"], batch_size),
            classes,
            output=output,
        )
        for key, value in quality.items():
            scores[f"{task}_{key}"] = value
    return scores


def run_experiment(
    tasks,
    *,
    lambdas,
    pretrain_epochs,
    config,
    distance="mse",
    strategy=None,
    l2_sp_alphas=(),
    anchor_lambdas=(),
    anchor_count=500,
):
    """Pretrains on the old task, fine-tunes on the new one, scores all.

    Progress goes to stderr (`console.Progress`).

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
        l2_sp_alphas: Floats >= 0, one fine-tuning each with L2-SP
            (`keras_sft.apply_l2_sp`) and no consistency term. Defaults to
            `()`.
        anchor_lambdas: Floats > 0, one SFT fine-tuning each with the
            consistency term on `anchor_count` unlabeled scenes of the old
            task's training split instead of on the new scenes
            (`SFTModel.fit(anchor_x=...)`). Defaults to `()`.
        anchor_count: Int > 0, the number of anchors, drawn with
            `config.seed`. Defaults to `500`.

    Returns:
        A list of dicts, one per model (`"pretrained"`, plain fine-tuning,
        SFT for each of `lambdas`, L2-SP for each of `l2_sp_alphas`, SFT on
        anchors for each of `anchor_lambdas`), with `method` and the old
        and new task's `mean_iou` and `pixel_accuracy` (the new task's
        `None` for the pretrained model of a new-head task).
    """
    strategy = strategy or tf.distribute.get_strategy()
    progress = console.Progress(
        2 + len(lambdas) + len(l2_sp_alphas) + len(anchor_lambdas)
    )
    progress.step("pretraining on the old task")
    pretrained = _fit(
        lambda: build_segmenter(
            tasks["input_shape"], tasks["classes"], seed=config.seed
        ),
        tasks["old_train"],
        epochs=pretrain_epochs,
        config=config,
        strategy=strategy,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rows = [
        {
            "method": "pretrained",
            **_scores(pretrained, tasks, config.batch_size),
        }
    ]
    anchor_x = None
    if anchor_lambdas:
        anchor_x = arrays.sample_inputs(
            tasks["old_train"], anchor_count, seed=config.seed
        )
    runs = [("plain fine-tuning (lambda=0)", 0.0, None, None)]
    runs += [(f"SFT (lambda={w:g})", w, None, None) for w in lambdas]
    runs += [(f"L2-SP (alpha={a:g})", 0.0, a, None) for a in l2_sp_alphas]
    runs += [
        (f"SFT, {len(anchor_x)} anchors (lambda={w:g})", w, None, anchor_x)
        for w in anchor_lambdas
    ]
    train, compile_kwargs = _new_task_training(tasks)
    for method, lambda_, alpha, anchors in runs:
        progress.step(method)
        model = _fit(
            lambda lambda_=lambda_, alpha=alpha: fine_tuning_model(
                pretrained,
                tasks,
                lambda_=lambda_,
                distance=distance,
                l2_sp_alpha=alpha,
            ),
            train,
            epochs=config.epochs,
            config=config,
            strategy=strategy,
            anchor_x=anchors,
            **compile_kwargs,
        )
        rows.append(
            {
                "method": method,
                **_scores(model.student, tasks, config.batch_size),
            }
        )
    return rows


def format_table(rows):
    """The rows of `run_experiment` as a Markdown table (`-` where a
    model has no head for a task)."""
    keys = (
        "old_mean_iou",
        "old_pixel_accuracy",
        "new_mean_iou",
        "new_pixel_accuracy",
    )
    lines = [
        "| model | old-task mean IoU | old-task pixel acc. "
        "| new-task mean IoU | new-task pixel acc. |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cells = ["-" if row[key] is None else f"{row[key]:.3f}" for key in keys]
        lines.append(f"| {row['method']} | {' | '.join(cells)} |")
    return "\n".join(lines)
