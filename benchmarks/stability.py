"""SFT at its defaults where the teacher hesitates: a binary classifier.

Pretrains a softmax classifier of two units on scikit-learn's 8x8 digits
(even against odd; Adam, 20 epochs), then fine-tunes it with SGD and
momentum on noisy digits, by plain fine-tuning and by `SFTModel` at its
defaults, at each learning rate and seed. Near the boundary the
teacher's two logits are nearly equal: `normalized_mse` must not weigh
those examples up (it divided by `sqrt(var + 1e-6)` until 2026-12-07, and
diverged here). One row per run: the last epoch's loss, the accuracy on
the pretraining task's held-out digits (retained) and on held-out noisy
digits (new), or the error that stopped the run.

    python -m benchmarks.stability
    python -m benchmarks.stability --learning_rates=0.05 --seeds=0
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from sklearn import datasets  # noqa: E402

import keras_sft  # noqa: E402
from benchmarks import report  # noqa: E402

_LEARNING_RATES = flags.DEFINE_list(
    "learning_rates", ["0.01", "0.05", "0.1"], "SGD learning rates."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Fine-tuning seeds.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", 5, "Fine-tuning epochs.", lower_bound=1
)

_METHODS = {"plain": 0.0, "SFT defaults": None}


def _tasks(seed=0):
    """`(pretraining, fine-tuning)` splits: each `(x, y, x_test, y_test)`
    of digits labelled even (0) or odd (1); the fine-tuning digits
    carry Gaussian noise (std 0.3), clipped."""
    digits = datasets.load_digits()
    x = (digits.data / 16).astype("float32")
    y = (digits.target % 2).astype("int32")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    noisy = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1).astype("float32")
    return (
        (x[:700], y[:700], x[700:900], y[700:900]),
        (noisy[900:1500], y[900:1500], noisy[1500:], y[1500:]),
    )


def _pretrained(task):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(task[0], task[1], epochs=20, verbose=0)
    return model


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def run(learning_rates, seeds, epochs):
    """One row per learning rate, seed and method."""
    old, new = _tasks()
    pretrained = _pretrained(old)
    spread = pretrained.predict(new[2], verbose=0).std(-1)
    print(
        f"teacher's logit std on the new test digits: min {spread.min():.4f}"
        f", median {np.median(spread):.2f}"
    )
    rows = []
    for learning_rate in learning_rates:
        for seed in seeds:
            for method, lambda_ in _METHODS.items():
                keras.utils.set_random_seed(seed)
                student = keras.models.clone_model(pretrained)
                student.set_weights(pretrained.get_weights())
                arguments = {} if lambda_ is None else {"lambda_": lambda_}
                model = keras_sft.SFTModel(student, **arguments)
                model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9))
                row = {"learning rate": learning_rate, "seed": seed}
                row["method"] = method
                try:
                    history = model.fit(
                        new[0], new[1], epochs=epochs, batch_size=32, verbose=0
                    )
                except keras_sft.NonFiniteLossError as error:
                    row["loss"] = type(error).__name__
                else:
                    row["loss"] = f"{history.history['loss'][-1]:.3g}"
                row["retained"] = f"{_accuracy(student, *old[2:]):.3f}"
                row["new"] = f"{_accuracy(student, *new[2:]):.3f}"
                rows.append(row)
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.machine())
    rows = run(
        [float(rate) for rate in _LEARNING_RATES.value],
        [int(seed) for seed in _SEEDS.value],
        _EPOCHS.value,
    )
    columns = ["learning rate", "seed", "method", "loss", "retained", "new"]
    for line in report.markdown(rows, [(c, c, "{}") for c in columns]):
        print(line)


if __name__ == "__main__":
    app.run(main)
