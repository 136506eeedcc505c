"""The examples' plots of accuracy against lambda, written as PNG files."""

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the backend)


def plot_forgetting(rows, path, shift):
    """Retained and new-task accuracy against lambda, as a PNG.

    Args:
        rows: The rows of `forgetting_experiment.run_demo`, the pretrained
            model first.
        path: String, the PNG file.
        shift: String, the domain shift of the fine-tuning data.
    """
    # Rows with anchors are another method on the same axis: left out.
    tuned = [
        row
        for row in rows
        if row["lambda"] is not None and not row.get("anchors")
    ]
    lambdas = [row["lambda"] for row in tuned]
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.plot(
        lambdas,
        [100 * row["retained"] for row in tuned],
        "o-",
        label="retained (uncovered classes, original domain)",
    )
    axes.plot(
        lambdas,
        [100 * row["new"] for row in tuned],
        "s-",
        label=f"new task (fine-tuned classes, {shift})",
    )
    axes.axhline(
        100 * rows[0]["retained"],
        color="gray",
        linestyle=":",
        label="pretrained, retained",
    )
    _finish_lambda_plot(
        figure,
        axes,
        lambdas,
        ylabel="test accuracy (%)",
        title="Forgetting against lambda",
        path=path,
    )


def plot_selection(selection, path):
    """New-task and retained accuracy of a `LambdaSelection`, as a PNG."""
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
    _finish_lambda_plot(
        figure,
        axes,
        lambdas,
        ylabel="accuracy (%)",
        title=f"{len(lambdas)} lambdas, cross-validated",
        path=path,
    )


def _finish_lambda_plot(figure, axes, lambdas, *, ylabel, title, path):
    """Puts `lambdas` on a symlog axis (0 included), labels, saves, closes."""
    # Symmetric log scale: lambda=0 (plain fine-tuning) sits at 0.
    linthresh = min((value for value in lambdas if value > 0), default=1.0)
    axes.set_xscale("symlog", linthresh=linthresh)
    axes.set_xlim(left=-0.2 * linthresh)
    axes.set_xlabel("lambda (0 = plain fine-tuning)")
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 100)
    axes.legend(loc="lower left", fontsize="small")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
