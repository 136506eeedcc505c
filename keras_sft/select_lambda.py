"""Choosing `lambda_` by k-fold cross-validation on the fine-tuning data.

Li & Hoiem advise picking the weight of the consistency term by
cross-validation. `select_lambda` fine-tunes a fresh copy of the pretrained
model for every `lambda_` of a grid on `k - 1` folds of the new data, and
measures

- new-task accuracy on the held-out fold, and
- retained accuracy on a held-out sample of the pretraining distribution,
  when one is given,

each averaged over the `k` folds. It then applies one stated rule: among the
values whose new-task accuracy is within `tolerance` of the best, take the
one with the highest retained accuracy (the largest `lambda_` on ties); with
no retained sample, take the largest such `lambda_`, the most conservative
value that costs no new-task accuracy.

Reference:
    Li & Hoiem, "Learning without Forgetting", TPAMI 2017, section 4
    (https://arxiv.org/abs/1606.09282).
"""

import dataclasses

import keras
import numpy as np

from keras_sft import _checks
from keras_sft import distances
from keras_sft.sft_model import SFTModel
from keras_sft.teacher import clone_teacher
from keras_sft.teacher import copy_model


@dataclasses.dataclass(frozen=True)
class LambdaScore:
    """Cross-validated accuracies of one `lambda_`, averaged over folds."""

    lambda_: float
    new_task_accuracy: float
    new_task_accuracy_std: float
    retained_accuracy: float | None


@dataclasses.dataclass(frozen=True)
class LambdaSelection:
    """The chosen `lambda_` and the score of every value tried."""

    lambda_: float
    scores: tuple[LambdaScore, ...]
    tolerance: float

    def to_markdown(self):
        """The scores as a markdown table, the chosen row marked."""
        lines = [
            "| lambda | new-task accuracy | retained accuracy | chosen |",
            "| --- | --- | --- | --- |",
        ]
        for score in self.scores:
            retained = (
                "-"
                if score.retained_accuracy is None
                else f"{score.retained_accuracy:.3f}"
            )
            lines.append(
                f"| {score.lambda_:g} | {score.new_task_accuracy:.3f} "
                f"+/- {score.new_task_accuracy_std:.3f} | {retained} | "
                f"{'yes' if score.lambda_ == self.lambda_ else ''} |"
            )
        return "\n".join(lines)


def choose_lambda(scores, tolerance):
    """Applies the selection rule of this module to `LambdaScore`s."""
    best = max(score.new_task_accuracy for score in scores)
    candidates = [
        score
        for score in scores
        if score.new_task_accuracy >= best - tolerance - 1e-12
    ]
    if all(score.retained_accuracy is not None for score in candidates):
        key = lambda score: (score.retained_accuracy, score.lambda_)  # noqa: E731
    else:
        key = lambda score: score.lambda_  # noqa: E731
    return max(candidates, key=key).lambda_


def _accuracy(model, x, y, batch_size):
    """Top-1 accuracy of a logits model on `(x, y)`."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def select_lambda(
    pretrained,
    x,
    y,
    *,
    lambdas=(0.0, 0.1, 0.3, 1.0, 3.0),
    folds=3,
    retained=None,
    tolerance=0.02,
    epochs=10,
    batch_size=32,
    optimizer=None,
    distance="normalized_mse",
    seed=0,
):
    """Chooses `lambda_` for `SFTModel` by k-fold cross-validation.

    Every run starts from a fresh copy of `pretrained`; `pretrained` itself
    is left untouched. The folds are a seeded permutation of the samples,
    so every sample is held out exactly once.

    Example:

    ```python
    selection = select_lambda(
        pretrained, new_x, new_y, retained=(old_x, old_y), folds=3
    )
    print(selection.to_markdown())
    model = SFTModel(pretrained, lambda_=selection.lambda_)
    ```

    Args:
        pretrained: A built `keras.Model` returning logits.
        x: Numpy array, the fine-tuning inputs.
        y: Numpy array of integer labels, the fine-tuning targets.
        lambdas: Sequence of floats >= 0, the grid. Defaults to
            `(0.0, 0.1, 0.3, 1.0, 3.0)`.
        folds: Int >= 2, the number of folds `k`. Defaults to `3`.
        retained: Tuple `(x, y)` of numpy arrays from the pretraining
            distribution, or `None`. Defaults to `None`.
        tolerance: Float >= 0, how much new-task accuracy (a fraction) may
            be given up for retained accuracy. Defaults to `0.02`.
        epochs: Int >= 1, epochs of each fine-tuning run. Defaults to `10`.
        batch_size: Int >= 1. Defaults to `32`.
        optimizer: Callable returning a fresh optimizer for each run, or
            `None` for `keras.optimizers.Adam(1e-3)`. Defaults to `None`.
        distance: String, `SFTModel`'s `distance`, for which `lambda_`
            is chosen (a value suits one distance only). Defaults to
            `"normalized_mse"`, `SFTModel`'s default.
        seed: Int, seeds the folds and each run. Defaults to `0`.

    Returns:
        A `LambdaSelection`: `.lambda_`, `.scores` and `.to_markdown()`.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(
            "Invalid value for arguments `x` and `y`. Expected the same "
            f"number of samples. Received: len(x)={len(x)}, len(y)={len(y)}"
        )
    _checks.check_int("folds", folds, minimum=2)
    if len(x) < folds:
        raise ValueError(
            "Invalid value for argument `folds`. Expected at most one fold "
            f"per sample. Received: folds={folds} for {len(x)} samples"
        )
    if not lambdas or not all(_checks.is_float_at_least(v, 0) for v in lambdas):
        raise ValueError(
            "Invalid value for argument `lambdas`. Expected a non-empty "
            f"sequence of floats >= 0. Received: lambdas={lambdas!r}"
        )
    _checks.check_float("tolerance", tolerance)
    _checks.check_int("epochs", epochs, minimum=1)
    _checks.check_int("batch_size", batch_size, minimum=1)
    _checks.check_one_of("distance", distance, distances.DISTANCES)
    if optimizer is None:
        optimizer = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731

    teacher = clone_teacher(pretrained)
    fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
    results = {float(value): ([], []) for value in lambdas}
    for fold in range(folds):
        train, held_out = fold_of != fold, fold_of == fold
        for value in results:
            keras.utils.set_random_seed(seed + fold)
            model = SFTModel(
                copy_model(pretrained),
                teacher=teacher,
                lambda_=value,
                distance=distance,
            )
            model.compile(optimizer=optimizer())
            model.fit(
                x[train],
                y[train],
                batch_size=batch_size,
                epochs=epochs,
                verbose=0,
            )
            new, old = results[value]
            new.append(_accuracy(model, x[held_out], y[held_out], batch_size))
            if retained is not None:
                old.append(_accuracy(model, *retained, batch_size))
            # Freed before the next candidate is made: memory holds one.
            del model
    scores = tuple(
        LambdaScore(
            lambda_=value,
            new_task_accuracy=float(np.mean(new)),
            new_task_accuracy_std=float(np.std(new)),
            retained_accuracy=float(np.mean(old)) if old else None,
        )
        for value, (new, old) in results.items()
    )
    return LambdaSelection(
        lambda_=choose_lambda(scores, tolerance),
        scores=scores,
        tolerance=float(tolerance),
    )
