r"""Chooses lambda by k-fold cross-validation on the fine-tuning data.

    python -m examples.select_lambda --pretrained=runs/demo/pretrained.keras

For each of `--lambda_grid`, picks the best retained accuracy within
`--tolerance` of the best new-task accuracy (`keras_sft.select_lambda`).
The defaults (`examples.lib.presets.SELECT_LAMBDA`) match `make demo`'s.
"""

from absl import flags

from examples import common_flags
from examples.lib import lambda_selection
from examples.lib import presets

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
    "New-task accuracy (a fraction) to give up for retained accuracy.",
    lower_bound=0.0,
)
PLOT = flags.DEFINE_string(
    "plot", "runs/select_lambda.png", "PNG file for the trade-off curve."
)
flags.adopt_module_key_flags(common_flags)


def select():
    """Runs the cross-validation the flags describe; returns the selection."""
    strategy = common_flags.set_up()
    train, _ = common_flags.load_split(common_flags.TRAIN_SPLIT.value)
    return lambda_selection.cross_validate(
        pretrained=common_flags.PRETRAINED.value,
        train=train,
        retained=common_flags.load_retained(),
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
