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
and writes the trade-off curve to `--plot`. The defaults
(`examples.lib.presets.SELECT_LAMBDA`) match `make demo`'s data.
"""

from absl import flags

from examples import common_flags
from examples.lib import lambda_selection
from examples.lib import presets
from keras_sft import data

LAMBDA_GRID = flags.DEFINE_list(
    "lambda_grid",
    ["0", "0.01", "0.03", "0.1", "0.3", "1"],
    "The lambda values to cross-validate (floats >= 0).",
)
flags.register_validator(
    LAMBDA_GRID,
    common_flags.nonnegative_floats,
    message="--lambda_grid must be floats >= 0",
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
flags.register_validator(RETAINED_CLASSES, common_flags.valid_classes)
PLOT = flags.DEFINE_string(
    "plot", "runs/select_lambda.png", "PNG file for the trade-off curve."
)
flags.adopt_module_key_flags(common_flags)


def select():
    """Runs the cross-validation the flags describe; returns the selection."""
    strategy = common_flags.set_up()
    train, _ = common_flags.load_split(common_flags.TRAIN_SPLIT.value)
    retained = None
    if RETAINED_CLASSES.value:
        sample, _ = common_flags.load_unshifted(RETAINED_SPLIT.value)
        classes = common_flags.parse_classes(RETAINED_CLASSES.value)
        retained = data.select_classes(sample, classes)
    return lambda_selection.cross_validate(
        pretrained=common_flags.PRETRAINED.value,
        train=train,
        retained=retained,
        lambdas=[float(value) for value in LAMBDA_GRID.value],
        folds=FOLDS.value,
        tolerance=TOLERANCE.value,
        strategy=strategy,
        config=common_flags.training_config(),
        plot=PLOT.value or None,
    )


def main(argv):
    common_flags.refuse_arguments(argv)
    select()


if __name__ == "__main__":
    flags.mark_flag_as_required(common_flags.PRETRAINED.name)
    common_flags.run(main, preset=presets.SELECT_LAMBDA)
