"""Choosing lambda by cross-validation on the fine-tuning data.

`examples.select_lambda` is the command line around it
(`presets.SELECT_LAMBDA` its defaults).
"""

import keras

import keras_sft
from examples.lib import arrays
from examples.lib import classifiers
from examples.lib import console
from examples.lib import plots
from examples.lib import saving


def cross_validate(
    *,
    pretrained,
    train,
    retained,
    lambdas,
    folds,
    tolerance,
    strategy,
    config,
    plot=None,
):
    """Cross-validates `lambdas` with `keras_sft.select_lambda`; prints
    its table and the chosen value on stdout.

    Args:
        pretrained: String, the pretrained `.keras` classifier.
        train: Unbatched `tf.data.Dataset` of `(image, label)`, the
            fine-tuning data.
        retained: Unbatched `tf.data.Dataset` of `(image, label)` from the
            pretraining distribution, or `None` for no retained accuracy.
        lambdas: Sequence of floats >= 0, the values to compare.
        folds: Int >= 2, the number of folds.
        tolerance: Float >= 0, the new-task accuracy that may be given up
            for retained accuracy.
        strategy: `tf.distribute.Strategy` to train under.
        config: `TrainingConfig` of each fine-tuning.
        plot: String, a PNG file for the trade-off curve, or `None`.
            Defaults to `None`.

    Returns:
        The `LambdaSelection` that `keras_sft.select_lambda` returns.
    """
    # select_lambda runs the fine-tunings in one call: one progress line.
    console.Progress(1).step(
        f"cross-validating {len(lambdas)} values of lambda on {folds} "
        f"folds ({len(lambdas) * folds} fine-tunings of {config.epochs} "
        "epochs)"
    )
    x, y = arrays.to_arrays(train)
    if retained is not None:
        retained = arrays.to_arrays(retained)
    with strategy.scope():
        model = classifiers.load_classifier(pretrained)
        selection = keras_sft.select_lambda(
            model,
            x,
            y,
            lambdas=lambdas,
            folds=folds,
            retained=retained,
            tolerance=tolerance,
            epochs=config.epochs,
            batch_size=config.batch_size,
            optimizer=lambda: keras.optimizers.Adam(config.learning_rate),
            distance=config.distance,
            seed=config.seed,
        )
    console.print_table("Cross-validated lambda:", selection.to_markdown())
    console.print_result(f"Chosen lambda: {selection.lambda_:g}")
    if plot:
        saving.ensure_parent(plot)
        plots.plot_selection(selection, plot)
    return selection
