r"""Chooses lambda by k-fold cross-validation on the fine-tuning data.

    python -m examples.select_lambda --pretrained=runs/demo/pretrained.keras

For each value of `--lambda_grid` and each of `--folds` folds, fine-tunes a
fresh copy of `--pretrained` with `keras_sft.SFTModel` on the other folds
of the fine-tuning data (`--train_split`, `--classes`, `--shift`), and
scores new-task accuracy on the held-out fold and retained accuracy on a
held-out sample of the pretraining distribution (`--retained_split`
restricted to `--retained_classes`, in its original domain). Picks, among
the values within `--tolerance` of the best new-task accuracy, the one with
the best retained accuracy (`keras_sft.select_lambda`), prints the table
and writes the trade-off curve to `--plot`.

The defaults match `make demo`: its pretrained model saw the first half of
the digits' train split; the second half gives the fine-tuning data
(classes 0-4, inverted) and the retained sample (classes 5-9, as they
were).
"""

import keras
import numpy as np
from absl import app
from absl import flags
from absl import logging

import keras_sft
from examples import common_flags
from examples import experiment
from keras_sft import data

LAMBDA_GRID = flags.DEFINE_list(
    "lambda_grid",
    ["0", "0.01", "0.03", "0.1", "0.3", "1"],
    "The lambda values to cross-validate (floats >= 0).",
)
FOLDS = flags.DEFINE_integer(
    "folds", 3, "Number of cross-validation folds.", lower_bound=2
)
TOLERANCE = flags.DEFINE_float(
    "tolerance",
    0.02,
    "New-task accuracy (a fraction) that may be given up for retained "
    "accuracy.",
    lower_bound=0.0,
)
RETAINED_SPLIT = flags.DEFINE_string(
    "retained_split",
    "train[50%:]",
    "Split of --dataset that gives the retained sample (not used for "
    "pretraining).",
)
RETAINED_CLASSES = flags.DEFINE_list(
    "retained_classes",
    ["5-9"],
    "Classes of the retained sample, in their original domain; no retained "
    "accuracy when empty.",
)
PLOT = flags.DEFINE_string(
    "plot",
    "runs/select_lambda.png",
    "PNG file for the trade-off curve.",
)
flags.register_validator(
    LAMBDA_GRID,
    common_flags.nonnegative_floats,
    message="--lambda_grid must be floats >= 0",
)
flags.register_validator(RETAINED_CLASSES, common_flags.valid_classes)
flags.adopt_module_key_flags(common_flags)


def _arrays(dataset):
    """An unbatched `(image, label)` dataset as two numpy arrays."""
    pairs = list(dataset.as_numpy_iterator())
    if not pairs:
        raise ValueError(
            "The selected data is empty; check the split and the classes"
        )
    images, labels = zip(*pairs, strict=True)
    return np.stack(images), np.array(labels)


def select():
    """Runs the cross-validation the flags describe; returns the selection."""
    strategy = common_flags.set_up()
    train, _ = common_flags.load_split(common_flags.TRAIN_SPLIT.value)
    x, y = _arrays(train)
    retained = None
    if RETAINED_CLASSES.value:
        sample, _ = data.load(
            common_flags.DATASET.value,
            split=RETAINED_SPLIT.value,
            data_dir=common_flags.DATA_DIR.value,
        )
        classes = common_flags.parse_classes(RETAINED_CLASSES.value)
        retained = _arrays(data.select_classes(sample, classes))
    with strategy.scope():
        pretrained = experiment.load_classifier(common_flags.PRETRAINED.value)
        selection = keras_sft.select_lambda(
            pretrained,
            x,
            y,
            lambdas=[float(v) for v in LAMBDA_GRID.value],
            folds=FOLDS.value,
            retained=retained,
            tolerance=TOLERANCE.value,
            epochs=common_flags.EPOCHS.value,
            batch_size=common_flags.BATCH_SIZE.value,
            optimizer=lambda: keras.optimizers.Adam(
                common_flags.LEARNING_RATE.value
            ),
            seed=common_flags.SEED.value,
        )
    logging.info("Cross-validated lambda:\n%s", selection.to_markdown())
    logging.info("Chosen lambda: %g", selection.lambda_)
    if PLOT.value:
        experiment.ensure_parent(PLOT.value)
        _plot(selection, PLOT.value)
    return selection


def _plot(selection, path):
    """New-task and retained accuracy against lambda, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    lambdas = [score.lambda_ for score in selection.scores]
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.errorbar(
        lambdas,
        [100 * score.new_task_accuracy for score in selection.scores],
        yerr=[100 * score.new_task_accuracy_std for score in selection.scores],
        fmt="s-",
        label="new task (held-out fold)",
    )
    if all(s.retained_accuracy is not None for s in selection.scores):
        axes.plot(
            lambdas,
            [100 * score.retained_accuracy for score in selection.scores],
            "o-",
            label="retained (held-out pretraining sample)",
        )
    axes.axvline(selection.lambda_, color="gray", linestyle=":", label="chosen")
    experiment.finish_lambda_plot(
        figure,
        axes,
        lambdas,
        ylabel="accuracy (%)",
        title=f"{len(lambdas)} lambdas, cross-validated",
        path=path,
    )
    pyplot.close(figure)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    select()


if __name__ == "__main__":
    flags.FLAGS.set_default("train_split", "train[50%:]")
    flags.FLAGS.set_default("classes", ["0-4"])
    flags.FLAGS.set_default("shift", "invert")
    flags.FLAGS.set_default("epochs", 80)
    flags.mark_flag_as_required(common_flags.PRETRAINED.name)
    common_flags.run(main)
