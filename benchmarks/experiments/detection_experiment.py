"""The detection forgetting experiment, importable (no flags).

A small grid detector (one cell per 8x8 patch, as a tiny YOLO or
CenterNet: per cell, logits over the background and the ten digits, and
the box of the digit whose centre falls in the cell) is pretrained on
scenes of digits (`detection_data.digit_scenes`), then fine-tuned from the
same weights on the same kind of scenes shifted to a new domain (the
negative image: bright background, dark digits) by plain fine-tuning, by
SFT on both heads (on the new scenes, and on unlabeled old scenes as
anchors) and by L2-SP. Each model is scored by mAP at IoU 0.5 on held-out
scenes of both domains. `examples.detection` is the command line around
it (`presets.DETECTION` its defaults).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_sft
from benchmarks.experiments import detection_data
from examples.lib import console
from keras_sft.teacher import copy_model

STRIDE = 8  # pixels per grid cell: three 2x2 poolings
CLASSES = 11  # the background (0) and the ten digits (1 + digit)
OUTPUTS = ("classes", "boxes")


def iou(box_a, box_b):
    """Intersection over union of two `(top, left, bottom, right)` boxes.

    Returns:
        Float in `[0, 1]`; 0 when both boxes are empty.
    """
    height = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    width = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    intersection = max(height, 0.0) * max(width, 0.0)
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    union = area_a + area_b - intersection
    return float(intersection / union) if union > 0 else 0.0


def mean_average_precision(detections, truths, *, iou_threshold=0.5):
    """Mean over classes of average precision, as in PASCAL VOC 2010+.

    For each class, detections of it from all images are taken by
    decreasing score; each is a true positive if the unmatched ground-truth
    box of its class and image that it overlaps most has IoU >=
    `iou_threshold` (that box is then matched), else a false positive.
    Average precision is the area under the precision-recall curve with
    all-point interpolation (precision at each recall is the best
    precision at that recall or beyond). The mean runs over the classes
    with at least one ground-truth box; detections of other classes are
    ignored.

    Example:

    ```python
    truths = [(np.array([[0, 0, 8, 8]]), np.array([3]))]
    detections = [(np.array([[0, 0, 8, 7]]), np.array([3]), np.array([0.9]))]
    mean_average_precision(detections, truths)  # 1.0
    ```

    Args:
        detections: Sequence, per image, of `(boxes, classes, scores)`:
            arrays `(k, 4)` as `(top, left, bottom, right)`, `(k,)` and
            `(k,)`.
        truths: Sequence, per image, of `(boxes, classes)`: arrays `(m, 4)`
            and `(m,)`.
        iou_threshold: Float in `(0, 1]`. Defaults to `0.5`.

    Returns:
        Float in `[0, 1]`.
    """
    if len(detections) != len(truths):
        raise ValueError(
            "Invalid value for argument `detections`. Expected one entry "
            f"per image of `truths` ({len(truths)}). Received: "
            f"{len(detections)} entries"
        )
    if not 0 < iou_threshold <= 1:
        raise ValueError(
            "Invalid value for argument `iou_threshold`. Expected a float in "
            f"(0, 1]. Received: iou_threshold={iou_threshold!r}"
        )
    classes = sorted({int(c) for _, labels in truths for c in labels})
    if not classes:
        raise ValueError(
            "Invalid value for argument `truths`. Expected at least one "
            "ground-truth box. Received: none"
        )
    return float(
        np.mean(
            [
                _average_precision(detections, truths, c, iou_threshold)
                for c in classes
            ]
        )
    )


def _average_precision(detections, truths, label, iou_threshold):
    """Average precision of class `label` (see `mean_average_precision`)."""
    targets = [np.asarray(boxes)[labels == label] for boxes, labels in truths]
    matched = [np.zeros(len(boxes), bool) for boxes in targets]
    found = [
        (score, image, box)
        for image, (boxes, labels, scores) in enumerate(detections)
        for box, score in zip(
            np.asarray(boxes)[labels == label],
            np.asarray(scores)[labels == label],
            strict=True,
        )
    ]
    # Stable: equal scores keep the images' order, so the result is fixed.
    found.sort(key=lambda detection: -detection[0])
    hits = np.zeros(len(found), bool)
    for rank, (_, image, box) in enumerate(found):
        overlaps = [
            -1.0 if taken else iou(box, target)
            for target, taken in zip(
                targets[image], matched[image], strict=True
            )
        ]
        if overlaps and max(overlaps) >= iou_threshold:
            matched[image][int(np.argmax(overlaps))] = True
            hits[rank] = True
    precision = np.cumsum(hits) / np.arange(1, len(found) + 1)
    # Each hit raises recall by 1/total; its interpolated precision is the
    # best precision at its rank or below.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return envelope[hits].sum() / sum(len(boxes) for boxes in targets)


def encode_targets(boxes, classes, grid_size):
    """Per-cell targets of the detector from boxes and classes.

    A digit belongs to the cell that holds its box's centre; should two
    share a cell (rare: their 8x8 windows do not overlap), the first wins.

    Args:
        boxes: Float array `(n, slots, 4)` from `digit_scenes`.
        classes: Int array `(n, slots)`, -1 for an empty slot.
        grid_size: Int, cells per side.

    Returns:
        A dict: `"classes"`, int32 `(n, grid, grid)` (0 background, else
        1 + digit); `"boxes"`, float32 `(n, grid, grid, 5)`: the centre's
        offset in the cell and the box's height and width, in cells, then 1
        on cells with a digit and 0 elsewhere (the mask of the box loss).
    """
    n = len(boxes)
    cell_classes = np.zeros((n, grid_size, grid_size), "int32")
    cell_boxes = np.zeros((n, grid_size, grid_size, 5), "float32")
    for scene, slot in zip(*np.nonzero(classes >= 0), strict=True):
        top, left, bottom, right = boxes[scene, slot] / STRIDE
        centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
        row = min(int(centre_y), grid_size - 1)
        col = min(int(centre_x), grid_size - 1)
        if cell_classes[scene, row, col]:
            continue
        cell_classes[scene, row, col] = 1 + classes[scene, slot]
        cell_boxes[scene, row, col] = (
            centre_y - row,
            centre_x - col,
            bottom - top,
            right - left,
            1.0,
        )
    return {"classes": cell_classes, "boxes": cell_boxes}


def decode(class_logits, box_offsets):
    """Detections from the detector's outputs: one per cell.

    Each cell proposes its most likely digit, scored by its probability,
    with its box; ranking by score is left to the metric, so there is no
    threshold and no suppression of duplicates (which count as false
    positives).

    Args:
        class_logits: Array `(n, grid, grid, 11)`.
        box_offsets: Array `(n, grid, grid, 4)`, as `encode_targets` codes.

    Returns:
        A list, per image, of `(boxes, classes, scores)` for
        `mean_average_precision`.
    """
    probabilities = ops.convert_to_numpy(ops.softmax(class_logits, axis=-1))
    box_offsets = np.asarray(box_offsets)
    grid = probabilities.shape[1]
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centre_y = (rows + box_offsets[..., 0]) * STRIDE
    centre_x = (cols + box_offsets[..., 1]) * STRIDE
    half_height = box_offsets[..., 2] * STRIDE / 2
    half_width = box_offsets[..., 3] * STRIDE / 2
    boxes = np.stack(
        [
            centre_y - half_height,
            centre_x - half_width,
            centre_y + half_height,
            centre_x + half_width,
        ],
        axis=-1,
    ).reshape(len(probabilities), -1, 4)
    digits = probabilities[..., 1:].reshape(len(probabilities), -1, 10)
    labels = digits.argmax(-1)
    scores = digits.max(-1)
    return list(zip(boxes, labels, scores, strict=True))


def box_loss(y_true, y_pred):
    """Squared error of the box offsets on the cells that hold a digit.

    `y_true` carries the cell mask as its last channel (see
    `encode_targets`), so that empty cells, whose boxes mean nothing, add
    nothing; the result is per cell, and Keras averages it over cells.
    """
    mask = y_true[..., 4]
    error = ops.sum(ops.square(y_true[..., :4] - y_pred), axis=-1)
    return mask * error


def build_detector(input_shape, *, seed=0):
    """A grid detector with a class head and a box-regression head.

    Three 3x3 convolutions each followed by 2x2 max pooling (one cell per
    8x8 patch), one more 3x3 convolution to see the neighbouring cells,
    and two 1x1 heads.

    Args:
        input_shape: Tuple `(height, width, channels)`, sides divisible by
            8.
        seed: Int, seed of the initial weights. Defaults to `0`.

    Returns:
        A `keras.Model` from images to `{"classes": (batch, H/8, W/8, 11)
        logits, "boxes": (batch, H/8, W/8, 4) offsets}`.
    """
    inputs = keras.Input(input_shape)
    hidden = inputs
    for i, filters in enumerate((16, 32, 64, 64)):
        hidden = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.HeUniform(seed + i),
        )(hidden)
        if i < 3:
            hidden = keras.layers.MaxPooling2D()(hidden)
    heads = {
        name: keras.layers.Conv2D(
            units,
            1,
            kernel_initializer=keras.initializers.GlorotUniform(seed + 4 + j),
            name=name,
        )(hidden)
        for j, (name, units) in enumerate(
            ((OUTPUTS[0], CLASSES), (OUTPUTS[1], 4))
        )
    }
    return keras.Model(inputs, heads, name="detector")


def digit_tasks(*, train_count=2000, test_count=500, image_size=32, seed=0):
    """Old (plain) and new (negative) scenes, train and test.

    The bundled digits are split 70/30 so that test scenes show glyphs no
    training scene shows; the new domain is `1 - image`.

    Args:
        train_count: Int > 0, training scenes per domain. Defaults to
            `2000`.
        test_count: Int > 0, test scenes per domain. Defaults to `500`.
        image_size: Int >= 16 divisible by 8, the canvas side. Defaults to
            `32`.
        seed: Int, seed of the split and of the scenes. Defaults to `0`.

    Returns:
        A dict from `old_train`, `new_train`, `old_test`, `new_test` to
        `(images, targets, truths)`: the images, `encode_targets`'s dict,
        and the per-image `(boxes, classes)` for the metric; and
        `input_shape`.
    """
    if not isinstance(image_size, int) or image_size % STRIDE:
        raise ValueError(
            "Invalid value for argument `image_size`. Expected an int "
            f"divisible by 8. Received: image_size={image_size!r}"
        )
    glyphs, labels = detection_data.bundled_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.7 * len(labels))
    tasks = {"input_shape": (image_size, image_size, 1)}
    for offset, (split, rows, count) in enumerate(
        (("train", order[:cut], train_count), ("test", order[cut:], test_count))
    ):
        for domain in ("old", "new"):
            images, boxes, classes = detection_data.digit_scenes(
                glyphs[rows],
                labels[rows],
                count=count,
                image_size=image_size,
                # Different scenes for each domain and split.
                seed=[seed, offset, int(domain == "new")],
            )
            if domain == "new":
                images = 1.0 - images
            truths = [
                (
                    scene_boxes[scene_classes >= 0],
                    scene_classes[scene_classes >= 0],
                )
                for scene_boxes, scene_classes in zip(
                    boxes, classes, strict=True
                )
            ]
            targets = encode_targets(boxes, classes, image_size // STRIDE)
            tasks[f"{domain}_{split}"] = (images, targets, truths)
    return tasks


def detection_map(model, task, *, batch_size=256):
    """mAP at IoU 0.5 of `model` on `task` (`(images, _, truths)`)."""
    images, _, truths = task
    outputs = model.predict(images, batch_size=batch_size, verbose=0)
    detections = decode(outputs["classes"], outputs["boxes"])
    return mean_average_precision(detections, truths)


def _loss():
    """The task losses of both heads."""
    return {
        "classes": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "boxes": box_loss,
    }


def _fit(model, task, *, epochs, config, anchor_x=None):
    """Compiles `model` (under the strategy in scope) and fits it."""
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=_loss(),
        jit_compile=config.jit_compile,
    )
    images, targets, _ = task
    options = {} if anchor_x is None else {"anchor_x": anchor_x}
    model.fit(
        images,
        targets,
        batch_size=config.batch_size,
        epochs=epochs,
        verbose=0,
        **options,
    )
    return model


def run_experiment(
    tasks,
    *,
    lambdas,
    alphas,
    anchor_count,
    pretrain_epochs,
    config,
    anchor_lambdas=(),
    strategy=None,
):
    """Pretrains on the old domain, fine-tunes on the new one, scores all.

    Progress goes to stderr (`console.Progress`).

    Args:
        tasks: Dict from `digit_tasks`.
        lambdas: Floats > 0, SFT's weights of the consistency term (`"mse"`
            on both heads' outputs): one fine-tuning each with the term on
            the new scenes.
        alphas: Floats > 0, L2-SP's strengths, one fine-tuning each.
        anchor_count: Int > 0, the old training scenes used as anchors.
        pretrain_epochs: Int, epochs on the old domain.
        config: `TrainingConfig`: the epochs of each fine-tuning, and the
            batch size, learning rate, seed and XLA choice of all training.
        anchor_lambdas: Floats > 0, one SFT fine-tuning each with the term
            on `anchor_count` unlabeled old scenes instead (`anchor_x`).
            Defaults to `()`.
        strategy: A `tf.distribute.Strategy` or `None` for the default.
            Defaults to `None`.

    Returns:
        A list of dicts, one per model (`"pretrained"`, plain fine-tuning,
        SFT, SFT with anchors, L2-SP), with `method`, `old_map` and
        `new_map`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    progress = console.Progress(
        2 + len(lambdas) + len(anchor_lambdas) + len(alphas)
    )
    progress.step("pretraining on the old domain")
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        pretrained = _fit(
            build_detector(tasks["input_shape"], seed=config.seed),
            tasks["old_train"],
            epochs=pretrain_epochs,
            config=config,
        )
    anchors = tasks["old_train"][0][:anchor_count]
    runs = [("plain fine-tuning", 0.0, None, None)]
    runs += [(f"SFT (lambda={w:g})", w, None, None) for w in lambdas]
    runs += [
        (f"SFT + {len(anchors)} anchors (lambda={w:g})", w, anchors, None)
        for w in anchor_lambdas
    ]
    runs += [(f"L2-SP (alpha={a:g})", 0.0, None, a) for a in alphas]
    models = [("pretrained", pretrained)]
    for method, weight, anchor_x, alpha in runs:
        progress.step(method)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            student = copy_model(pretrained)
            if alpha is not None:
                keras_sft.apply_l2_sp(student, alpha)
            model = keras_sft.SFTModel(
                student,
                lambda_=weight,
                distance="mse",
                distill_outputs=list(OUTPUTS),
            )
            _fit(
                model,
                tasks["new_train"],
                epochs=config.epochs,
                config=config,
                anchor_x=anchor_x,
            )
        models.append((method, model.student))
    return [
        {
            "method": method,
            "old_map": detection_map(model, tasks["old_test"]),
            "new_map": detection_map(model, tasks["new_test"]),
        }
        for method, model in models
    ]


def format_table(rows):
    """The rows of `run_experiment` as a Markdown table."""
    lines = [
        "| model | old-domain mAP@0.5 | new-domain mAP@0.5 | mean |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        mean = (row["old_map"] + row["new_map"]) / 2
        lines.append(
            f"| {row['method']} | {row['old_map']:.3f} "
            f"| {row['new_map']:.3f} | {mean:.3f} |"
        )
    return "\n".join(lines)
