"""The forgetting benchmark: shifts times methods times seeds.

A classifier is pretrained on the first half of a dataset's train split,
then fine-tuned on new data from its second half, moved to a new domain
(`SHIFTS`), by each method of `METHODS`. Each fine-tuned model is scored on
the test split: on what it knew before (retained) and on the new task
(new); overall is the sample-weighted mean of the two.

Kinds of shift:

- `"covered"`: the new data is the first half of the classes in a new
  domain; retained is the other classes in the original domain, which the
  new data never shows (the `examples.demo` setting).
- `"all"`: every class in a new domain; retained is every class in the
  original domain.
- `"new_head"`: the model is pretrained on the first half of the classes;
  the new task is the other half, learned by a new head
  (`keras_sft.add_head`); retained is the old head on the old classes, as
  in Learning without Forgetting.

A method's strength (SFT's `lambda_`, L2-SP's `alpha`, WiSE-FT's `alpha`)
is chosen per shift and seed among its grid on a held-out fifth of the new
data and a held-out sample of the pretraining data, with the rule of
`keras_sft.select_lambda` (the most retained accuracy within `TOLERANCE`
of the best new-task accuracy). Every model is trained on the other four
fifths; the grid's `0` is plain fine-tuning, so a selection may decline the
method. A hold-out rather than `select_lambda`'s k-fold cross-validation:
k folds cost k times the runs, beyond this benchmark's time budget.

Each strength of each SFT distance is also scored on the test split
(`sweep` rows): what a user who never tunes gets from each fixed value.

A method is one entry of `METHODS`; a new one is one more entry (for
example `fit_options=lambda task: {"anchor_x": task.anchor_x}`).
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable

import keras
import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the backend)

import keras_sft
from benchmarks.experiments import image_shifts
from examples.lib import arrays
from examples.lib import classifiers
from examples.lib import console
from examples.lib.training_config import TrainingConfig
from keras_sft import data
from keras_sft.select_lambda import LambdaScore
from keras_sft.select_lambda import choose_lambda
from keras_sft.teacher import copy_model

TOLERANCE = 0.02
# The fraction of the new data held out to choose each method's strength.
VALIDATION_FRACTION = 0.2
# As `examples.demo`: long enough for plain fine-tuning to fit the new data.
TRAINING = TrainingConfig(epochs=80, verbose=0)
PRETRAIN_EPOCHS = 30
# What `examples.forgetting_benchmark --quick` runs: one seed, two shifts,
# two methods, few epochs.
QUICK = {
    "seeds": (0,),
    "shifts": ("invert", "new_head"),
    "methods": ("plain", "SFT normalized_mse"),
    "epochs": 3,
    "pretrain_epochs": 3,
}


@dataclasses.dataclass(frozen=True)
class Shift:
    """A new task: its kind (see the module) and the images' new domain,
    a function of `(images, seed)`."""

    kind: str
    transform: Callable[..., np.ndarray]


def _unseeded(transform):
    """`transform` as a function of `(images, seed)` that ignores `seed`."""
    return lambda images, seed: transform(images)


SHIFTS = {
    "translate": Shift("covered", _unseeded(image_shifts.translate)),
    "rotate": Shift("covered", _unseeded(image_shifts.rotate)),
    "invert": Shift("covered", _unseeded(image_shifts.invert)),
    "noise": Shift("covered", image_shifts.add_noise),
    "new_head": Shift("new_head", _unseeded(lambda images: images)),
    "bright": Shift("all", _unseeded(image_shifts.brighten)),
}


def _no_options(task):
    """No extra `fit` arguments."""
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    """A fine-tuning method: SFT's distance, or L2-SP, and a strength grid.

    Args:
        distance: String, the `SFTModel` distance of the consistency term
            (the strengths are its `lambda_`), or `None` (`lambda_=0`).
        strengths: Tuple of floats >= 0, the grid the strength is chosen
            from; `(0.0,)` for plain fine-tuning.
        l2_sp: Bool, whether the strengths are L2-SP's `alpha` instead.
        fit_options: Callable from the `Task` to extra `SFTModel.fit`
            keyword arguments.
        adaptive: Dict or `None`. A dict makes the strengths the
            `target_distill_loss` of a `keras_sft.AdaptiveLambda` with
            these further arguments, updated once per epoch, instead of a
            fixed `lambda_`.
    """

    distance: str | None
    strengths: tuple
    l2_sp: bool = False
    fit_options: Callable = _no_options
    adaptive: dict | None = None


@dataclasses.dataclass(frozen=True)
class WiseFT:
    """WiSE-FT of another method's chosen model, `alpha` chosen in `alphas`
    (`1.0` is that model unchanged)."""

    base: str
    alphas: tuple


def _anchors(task):
    """The pretraining inputs as anchors (`fit(anchor_x=...)`)."""
    return {"anchor_x": task.anchor_x}


_ADAPTIVE = {"horizon": 10}

# Two strengths a factor of 10 apart beside 0 (the time budget: each is one
# fine-tuning per shift and seed); `squared_l2` is `mse` times the number
# of outputs, so its grid sits between `mse`'s (0.0015 x 10 units = 0.015).
METHODS = {
    "plain": Method(None, (0.0,)),
    "L2-SP": Method(None, (0.0, 0.001, 0.01), l2_sp=True),
    "SFT mse": Method("mse", (0.0, 0.005, 0.05)),
    "SFT squared_l2": Method("squared_l2", (0.0, 0.0015, 0.015)),
    "SFT kl": Method("kl", (0.0, 0.3, 3.0)),
    "SFT normalized_mse": Method("normalized_mse", (0.0, 0.3, 3.0)),
    # `SFTModel`'s defaults, never tuned, on the new inputs or on anchors.
    "SFT defaults": Method("mse", (0.05,)),
    "SFT defaults on anchors": Method("mse", (0.05,), fit_options=_anchors),
    # No strength: `lambda_` adapted to hold `distill_loss` at a target
    # (docs/forgetting.md, "No strength to tune"); a horizon of about one
    # epoch, so that it can reach the target within the run.
    "SFT adaptive 0.5": Method("mse", (0.5,), adaptive=_ADAPTIVE),
    "SFT adaptive 2": Method("mse", (2.0,), adaptive=_ADAPTIVE),
    "SFT adaptive 0.5 on anchors": Method(
        "mse", (0.5,), adaptive=_ADAPTIVE, fit_options=_anchors
    ),
    "WiSE-FT 0.5 of plain": WiseFT("plain", (0.5,)),
    "WiSE-FT of plain": WiseFT("plain", (0.25, 0.5, 0.75, 1.0)),
    "WiSE-FT 0.5 of SFT mse": WiseFT("SFT mse", (0.5,)),
    "WiSE-FT of SFT mse": WiseFT("SFT mse", (0.25, 0.5, 0.75, 1.0)),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One shift's arrays, each an `(x, y)` pair.

    `train` and `validation` are the new data, split; `old_train` is what
    the model was pretrained on and `old_validation` what was held out of
    it; `test_retained` and `test_new` score. `num_new_classes` is the new
    head's size, `None` without one.
    """

    train: tuple
    validation: tuple
    old_train: tuple
    old_validation: tuple
    test_retained: tuple
    test_new: tuple
    num_new_classes: int | None

    @property
    def anchor_x(self):
        """Unlabelled inputs of the old distribution: the pretraining
        inputs, which users often keep without their labels."""
        return self.old_train[0]


def run_benchmark(
    *,
    output_dir,
    shifts=tuple(SHIFTS),
    methods=tuple(METHODS),
    seeds=(0, 1, 2),
    config=TRAINING,
    pretrain_epochs=PRETRAIN_EPOCHS,
    dataset="digits",
    data_dir=None,
):
    """Runs the grid; writes `forgetting.md`, `forgetting.png`, `sweep.md`
    and the rows as `rows.json`. Progress goes to stderr, one line per seed
    and shift (`console.Progress`).

    Args:
        output_dir: String, the directory of the table and the plot.
        shifts: Sequence of names of `SHIFTS`. Defaults to all.
        methods: Sequence of names of `METHODS` (a WiSE-FT entry needs its
            base). Defaults to all.
        seeds: Sequence of ints, one run of everything per seed. Defaults
            to `(0, 1, 2)`.
        config: `TrainingConfig` of each fine-tuning; pretraining takes its
            batch size and learning rate. Defaults to `TRAINING`.
        pretrain_epochs: Int, epochs of pretraining. Defaults to
            `PRETRAIN_EPOCHS`.
        dataset: String, `"digits"` or a TFDS name. Defaults to `"digits"`.
        data_dir: String, the TFDS data directory. Defaults to `None`.

    Returns:
        A tuple `(rows, sweep)` of lists of dicts: one row per shift,
        method and seed (keys `"shift"`, `"method"`, `"seed"`,
        `"strength"`, `"retained"`, `"new"`, `"overall"`), and one sweep
        row per shift, seed, distance and `lambda_` (`"distance"` and
        `"lambda"` instead of `"method"` and `"strength"`).
    """
    _check_names("shifts", shifts, SHIFTS)
    _check_names("methods", methods, METHODS)
    for name in methods:
        method = METHODS[name]
        if isinstance(method, WiseFT) and method.base not in methods:
            raise ValueError(
                "Invalid value for argument `methods`. Expected the base of "
                f"each WiSE-FT entry among them. Received: methods={methods!r}"
                f" without {method.base!r}"
            )
    os.makedirs(output_dir, exist_ok=True)
    pool = _load(dataset, "train", data_dir)
    num_classes = int(pool[1].max()) + 1
    half = len(pool[0]) // 2
    old_pool = pool[0][:half], pool[1][:half]
    new_pool = pool[0][half:], pool[1][half:]
    test = _load(dataset, "test", data_dir)
    rows, sweep = [], []
    progress = console.Progress(len(seeds) * len(shifts))
    for seed in seeds:
        pretrained = {}
        for shift_name in shifts:
            progress.step(f"seed {seed}, {shift_name}")
            shift = SHIFTS[shift_name]
            task, old_classes = _task(
                shift, old_pool, new_pool, test, num_classes, seed
            )
            key = tuple(old_classes)
            if key not in pretrained:
                pretrained[key] = _pretrain(
                    task, len(old_classes), config, pretrain_epochs, seed
                )
            shift_rows, shift_sweep = _run_shift(
                pretrained[key], task, methods, config, seed
            )
            for row in shift_rows + shift_sweep:
                row.update(shift=shift_name, seed=seed)
            rows += shift_rows
            sweep += shift_sweep
    with open(os.path.join(output_dir, "rows.json"), "w") as file:
        json.dump({"rows": rows, "sweep": sweep}, file)
    write_reports(rows, sweep, output_dir)
    return rows, sweep


def run_grid(*, quick=False, epochs=TRAINING.epochs, **grid):
    """`run_benchmark` of a grid given as the binary's flags give it.

    Args:
        quick: Bool, whether `QUICK` replaces the grid's settings (`seeds`,
            `shifts`, `methods`, `epochs`, `pretrain_epochs`). Defaults to
            `False`.
        epochs: Int, the epochs of each fine-tuning (the `epochs` of
            `TRAINING`). Defaults to `TRAINING.epochs`.
        **grid: The other arguments of `run_benchmark`, but `config`.

    Returns:
        What `run_benchmark` returns.
    """
    settings = {**grid, "epochs": epochs, **(QUICK if quick else {})}
    epochs = settings.pop("epochs")
    config = dataclasses.replace(TRAINING, epochs=epochs)
    return run_benchmark(config=config, **settings)


def merge_reports(directories, output_dir):
    """Writes the reports of the `rows.json` of `directories` together
    (`write_reports`) to `output_dir`: separate runs, one per seed, say."""
    rows, sweep = [], []
    for directory in directories:
        with open(os.path.join(directory, "rows.json")) as file:
            saved = json.load(file)
        rows += saved["rows"]
        sweep += saved["sweep"]
    os.makedirs(output_dir, exist_ok=True)
    write_reports(rows, sweep, output_dir)


def write_reports(rows, sweep, output_dir):
    """Writes the table, the plot and the sweep of `run_benchmark`'s rows.

    Separate runs (one per seed, say) merge by concatenating the rows of
    their `rows.json` files.
    """
    seeds = len({row["seed"] for row in rows})
    summary = aggregate(rows, ("shift", "method"))
    with open(os.path.join(output_dir, "forgetting.md"), "w") as file:
        file.write(markdown_table(summary, ("shift", "method"), seeds))
    plot_retained_against_new(
        summary, os.path.join(output_dir, "forgetting.png")
    )
    runs = len({(row["seed"], row["shift"]) for row in sweep})
    with open(os.path.join(output_dir, "sweep.md"), "w") as file:
        file.write(
            markdown_table(
                aggregate(sweep, ("distance", "lambda")),
                ("distance", "lambda"),
                runs,
            )
        )


def aggregate(rows, keys):
    """Mean and spread of each accuracy over the rows sharing `keys`.

    The spread is the sample standard deviation (`ddof=1`; `0.0` for one
    row). Groups keep the order of their first row.

    Args:
        rows: List of dicts with the `keys` and `"retained"`, `"new"`,
            `"overall"`.
        keys: Tuple of key names to group by.

    Returns:
        A list of dicts: the `keys`, `"count"`, and for each accuracy
        `"<name>_mean"` and `"<name>_spread"`.
    """
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    summary = []
    for values, members in groups.items():
        entry = dict(zip(keys, values, strict=True), count=len(members))
        for name in ("retained", "new", "overall"):
            scores = np.array([member[name] for member in members])
            entry[f"{name}_mean"] = float(scores.mean())
            entry[f"{name}_spread"] = (
                float(scores.std(ddof=1)) if len(scores) > 1 else 0.0
            )
        summary.append(entry)
    return summary


def markdown_table(summary, keys, runs):
    """`aggregate`'s output as a Markdown table, accuracies in percent."""
    lines = [
        f"Mean ± standard deviation over {runs} runs, test accuracy (%).",
        "",
        "| " + " | ".join(keys) + " | retained | new | overall |",
        "| " + " | ".join("---" for _ in keys) + " | ---: | ---: | ---: |",
    ]
    for entry in summary:
        cells = [_cell(entry[key]) for key in keys]
        cells += [
            f"{100 * entry[f'{name}_mean']:.1f} ± "
            f"{100 * entry[f'{name}_spread']:.1f}"
            for name in ("retained", "new", "overall")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_retained_against_new(summary, path):
    """Retained against new accuracy, one point per shift and method.

    Args:
        summary: `aggregate`'s output grouped by `("shift", "method")`.
        path: String, the PNG file.
    """
    shifts = list(dict.fromkeys(entry["shift"] for entry in summary))
    methods = list(dict.fromkeys(entry["method"] for entry in summary))
    markers = "osD^vP*Xph<>"
    figure, grid = pyplot.subplots(
        1, len(shifts), figsize=(3.2 * len(shifts), 3.6), squeeze=False
    )
    for axes, shift in zip(grid[0], shifts, strict=True):
        for index, method in enumerate(methods):
            for entry in summary:
                if (entry["shift"], entry["method"]) != (shift, method):
                    continue
                axes.errorbar(
                    100 * entry["new_mean"],
                    100 * entry["retained_mean"],
                    xerr=100 * entry["new_spread"],
                    yerr=100 * entry["retained_spread"],
                    fmt=markers[index % len(markers)],
                    color=f"C{index % 10}",
                    label=method,
                    capsize=2,
                )
        axes.set_title(shift)
        axes.set_xlabel("new-task accuracy (%)")
        axes.set_ylim(0, 100)
    grid[0][0].set_ylabel("retained accuracy (%)")
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize="small")
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _cell(value):
    """A table cell: floats as `%g`."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_names(argument, names, known):
    """Raises `ValueError` unless `names` is a non-empty subset of `known`."""
    if not names or any(name not in known for name in names):
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected names of "
            f"{tuple(known)}. Received: {argument}={tuple(names)!r}"
        )


def _load(dataset, split, data_dir):
    """A split as `(images, labels)` numpy arrays."""
    return arrays.to_arrays(
        data.load(dataset, split=split, data_dir=data_dir)[0]
    )


def _where(pair, classes):
    """The samples of `pair` whose label is in `classes`."""
    keep = np.isin(pair[1], classes)
    return pair[0][keep], pair[1][keep]


def _task(shift, old_pool, new_pool, test, num_classes, seed):
    """The arrays of one shift and seed, and the pretraining classes."""
    first = list(range(num_classes // 2))
    second = list(range(num_classes // 2, num_classes))
    everything = list(range(num_classes))

    def moved(pair, offset):
        return shift.transform(pair[0], seed=seed + offset), pair[1]

    if shift.kind == "new_head":
        old_classes = first
        new_x, new_y = _where(new_pool, second)
        new = new_x, new_y - len(first)
        test_x, test_y = _where(test, second)
        test_new = test_x, test_y - len(first)
        test_retained = _where(test, first)
        num_new = len(second)
    else:
        old_classes = everything
        covered = first if shift.kind == "covered" else everything
        kept = second if shift.kind == "covered" else everything
        new = moved(_where(new_pool, covered), 0)
        test_new = moved(_where(test, covered), 1)
        test_retained = _where(test, kept)
        num_new = None
    old_x, old_y = _where(old_pool, old_classes)
    # Separate generators: the old split, hence the pretrained model, is
    # the same for every shift of a seed.
    old_order = np.random.default_rng(seed).permutation(len(old_x))
    new_order = np.random.default_rng(seed + 1).permutation(len(new[0]))
    new_cut = int(len(new_order) * VALIDATION_FRACTION)
    old_cut = int(len(old_order) * VALIDATION_FRACTION)
    task = Task(
        train=tuple(a[new_order[new_cut:]] for a in new),
        validation=tuple(a[new_order[:new_cut]] for a in new),
        old_train=(old_x[old_order[old_cut:]], old_y[old_order[old_cut:]]),
        old_validation=(old_x[old_order[:old_cut]], old_y[old_order[:old_cut]]),
        test_retained=test_retained,
        test_new=test_new,
        num_new_classes=num_new,
    )
    return task, old_classes


def _pretrain(task, num_classes, config, epochs, seed):
    """A classifier trained on the old data that `task` does not hold out."""
    x, y = task.old_train
    keras.utils.set_random_seed(seed)
    model = classifiers.build_classifier(
        "mlp", input_shape=x.shape[1:], num_classes=num_classes, seed=seed
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(x, y, batch_size=config.batch_size, epochs=epochs, verbose=0)
    return model


def _run_shift(pretrained, task, methods, config, seed):
    """The rows of every method, and the sweep rows, of one task."""
    runs = {}

    def run(distance, strength, method):
        key = (
            (None, 0.0)
            if strength == 0
            else (
                "l2_sp" if method.l2_sp else distance,
                strength,
                repr(method.adaptive),
                method.fit_options,
            )
        )
        if key not in runs:
            student = _finetune(
                pretrained, task, method, strength, config=config, seed=seed
            )
            runs[key] = (
                student,
                _score(student, task.old_validation, task.validation, task),
                _score(student, task.test_retained, task.test_new, task),
            )
        return runs[key]

    chosen, rows, sweep, swept = {}, [], [], set()
    for name in methods:
        method = METHODS[name]
        if isinstance(method, WiseFT):
            continue
        results = {
            strength: run(method.distance, strength, method)
            for strength in method.strengths
        }
        strength = _choose(
            {value: result[1] for value, result in results.items()}
        )
        chosen[name] = results[strength][0]
        rows.append(_row(name, strength, results[strength][2]))
        # The sweep is of fixed `lambda_` values on the new inputs alone.
        if (
            method.distance is None
            or method.l2_sp
            or method.adaptive is not None
            or method.fit_options is not _no_options
        ):
            continue
        for value, result in results.items():
            # Once per distance and lambda_, whichever methods ran it.
            if (method.distance, value) not in swept:
                swept.add((method.distance, value))
                sweep.append(
                    dict(_row(None, value, result[2]), distance=method.distance)
                )
    for name in methods:
        method = METHODS[name]
        if not isinstance(method, WiseFT):
            continue
        models = {
            alpha: _wise_ft(chosen[method.base], pretrained, alpha, task)
            for alpha in method.alphas
        }
        alpha = _choose(
            {
                value: _score(model, task.old_validation, task.validation, task)
                for value, model in models.items()
            },
            # A smaller alpha is the more conservative one here.
            conservative=min,
        )
        rows.append(
            _row(
                name,
                alpha,
                _score(models[alpha], task.test_retained, task.test_new, task),
            )
        )
    for row in sweep:
        row["lambda"] = row.pop("strength")
        del row["method"]
    return rows, sweep


def _row(method, strength, scores):
    """A result row without its shift and seed."""
    retained, new, overall = scores
    return {
        "method": method,
        "strength": float(strength),
        "retained": retained,
        "new": new,
        "overall": overall,
    }


def _choose(scores, conservative=max):
    """`select_lambda`'s rule on `{strength: (retained, new, overall)}`."""
    if len(scores) == 1:
        return next(iter(scores))
    sign = 1.0 if conservative is max else -1.0
    # `choose_lambda` breaks ties towards the largest value; the sign turns
    # that towards the smallest where smaller is more conservative.
    chosen = choose_lambda(
        [
            LambdaScore(
                lambda_=sign * strength,
                new_task_accuracy=new,
                new_task_accuracy_std=0.0,
                retained_accuracy=retained,
            )
            for strength, (retained, new, _) in scores.items()
        ],
        TOLERANCE,
    )
    return sign * chosen


def _finetune(pretrained, task, method, strength, *, config, seed):
    """The student that `method` at `strength` fine-tunes on `task.train`."""
    keras.utils.set_random_seed(seed)
    student = copy_model(pretrained)
    lambda_ = 0.0 if method.l2_sp else strength
    if method.l2_sp:
        keras_sft.apply_l2_sp(student, strength)
    x, y = task.train
    if method.adaptive is not None and strength > 0:
        # One `fit` epoch holds every epoch (below): update at each of
        # those epochs' ends.
        lambda_ = keras_sft.AdaptiveLambda(
            strength,
            update_freq=math.ceil(len(x) / config.batch_size),
            **method.adaptive,
        )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    options = {}
    if task.num_new_classes is not None:
        student = keras_sft.add_head(student, task.num_new_classes)
        old_head, new_head = student.output_names
        options = {"distill_outputs": [old_head]}
        loss, y = {new_head: loss}, {new_head: y}
    model = keras_sft.SFTModel(
        student,
        lambda_=lambda_,
        distance=method.distance or "mse",
        # A short fit on arrays does not repay the cache's pass (issue 16).
        cache_teacher=False,
        **options,
    )
    # Without XLA: compiling each of hundreds of small models costs more
    # than it saves.
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=loss,
        jit_compile=False,
    )
    # The epochs as one pass over reshuffled copies: the same batches as
    # `epochs=config.epochs` with shuffling, without the per-epoch cost of
    # Keras's data adapter, which dominates a fit this small.
    order = np.concatenate(
        [
            np.random.default_rng([seed, epoch]).permutation(len(x))
            for epoch in range(config.epochs)
        ]
    )
    model.fit(
        x[order],
        keras.tree.map_structure(lambda labels: labels[order], y),
        batch_size=config.batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        **method.fit_options(task),
    )
    return model.student


def _score(student, retained, new, task):
    """`(retained, new, overall)` accuracies on two `(x, y)` pairs.

    With a new head, the old head scores `retained` and the new one `new`.
    """
    # One eager call per set: `predict` would trace anew for each of the
    # hundreds of models, for a few hundred small images.
    old_logits = student(retained[0], training=False)
    new_logits = student(new[0], training=False)
    if task.num_new_classes is not None:
        old_logits, new_logits = old_logits[0], new_logits[1]
    old_correct = np.argmax(keras.ops.convert_to_numpy(old_logits), -1)
    new_correct = np.argmax(keras.ops.convert_to_numpy(new_logits), -1)
    old_correct = old_correct == retained[1]
    new_correct = new_correct == new[1]
    return (
        float(old_correct.mean()),
        float(new_correct.mean()),
        float(np.concatenate([old_correct, new_correct]).mean()),
    )


def _wise_ft(student, pretrained, alpha, task):
    """`keras_sft.wise_ft` of `student`; a new head has no pretrained
    value, so it keeps its fine-tuned weights."""
    if task.num_new_classes is None:
        return keras_sft.wise_ft(student, pretrained, alpha=alpha)
    reference = keras_sft.add_head(copy_model(pretrained), task.num_new_classes)
    head = student.output_names[1]
    reference.get_layer(reference.output_names[1]).set_weights(
        student.get_layer(head).get_weights()
    )
    return keras_sft.wise_ft(student, reference, alpha=alpha)
