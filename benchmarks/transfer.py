"""Defaults chosen for transfer: families times shifts times methods.

Each family of `benchmarks.families` is pretrained once per seed, then
fine-tuned to each of its shifts by each method of `METHODS` at a fixed
strength: what a user who never tunes gets. A row holds the retained,
new and overall accuracy on the test data (overall: over the two test
sets together). The defaults are chosen by the worst case, over families,
shifts and seeds, of each method's overall accuracy minus plain
fine-tuning's on the same seed (`worst_cases`), on some families, and
confirmed on the others (`choose`); `check_targets` holds a method to the
targets of issue 25.
"""

import dataclasses
import json
import os
import statistics

import keras
import numpy as np

import keras_sft
from benchmarks import families as families_lib
from benchmarks import label_aware
from examples.lib import console
from keras_sft.teacher import copy_model

# Where plain fine-tuning forgets this much (points of retained accuracy),
# a method must keep `RETAINED_GAIN` more points than plain, at a cost of
# at most `NEW_COST` points of the new task; everywhere, it may lose at
# most `OVERALL_LOSS` points of overall accuracy to plain.
FORGETTING = 30.0
RETAINED_GAIN = 15.0
NEW_COST = 5.0
OVERALL_LOSS = 1.0


@dataclasses.dataclass(frozen=True)
class Method:
    """A way of fine-tuning: `SFTModel` arguments, L2-SP, or a label-aware
    term of `benchmarks.label_aware`.

    Args:
        sft: Dict of `keras_sft.SFTModel` keyword arguments (`{}`: its
            defaults), or `None` for plain fine-tuning (`lambda_=0`).
        l2_sp: Float, L2-SP's `alpha` (`keras_sft.apply_l2_sp`), with
            `lambda_=0`, or `None`.
        label_aware: Tuple `(term, lambda_)`, a name of
            `label_aware.TERMS` and its weight, trained by
            `label_aware.LabelAwareSFT` instead of `SFTModel`, or `None`.
    """

    sft: dict | None = None
    l2_sp: float | None = None
    label_aware: tuple | None = None


# `SFTModel`'s defaults, the defaults before issue 25, `normalized_mse` at
# stronger settings, the label-aware candidates and L2-SP at the forgetting
# benchmark's strength.
METHODS = {
    "plain": Method(),
    "SFT defaults": Method(sft={}),
    "SFT mse 0.05": Method(sft={"lambda_": 0.05, "distance": "mse"}),
    "SFT normalized_mse 0.5": Method(
        sft={"lambda_": 0.5, "distance": "normalized_mse"}
    ),
    "SFT normalized_mse 1": Method(
        sft={"lambda_": 1.0, "distance": "normalized_mse"}
    ),
    "SFT non_target 1": Method(label_aware=("non_target", 1.0)),
    "SFT corrected 1": Method(label_aware=("corrected", 1.0)),
    "SFT trusted 1": Method(label_aware=("trusted", 1.0)),
    "L2-SP 0.01": Method(l2_sp=0.01),
}


def run(
    *,
    families=tuple(families_lib.FAMILIES),
    methods=tuple(METHODS),
    seeds=(0, 1, 2),
    shifts=None,
    pretrained_dir=None,
    method_table=None,
    quick=False,
):
    """Fine-tunes every family to each shift by each method, per seed.

    Progress goes to stderr, one line per family, seed and shift.

    Args:
        families: Sequence of names of `families.FAMILIES`. Defaults to
            all.
        methods: Sequence of method names. Defaults to all of `METHODS`.
        seeds: Sequence of ints. Defaults to `(0, 1, 2)`.
        shifts: Sequence of shift names, each family running those it has,
            or `None` for all. Defaults to `None`.
        pretrained_dir: String, where pretrained models are kept between
            runs, or `None`. Defaults to `None`.
        method_table: Dict from name to `Method`, or `None` for `METHODS`.
            Defaults to `None`.
        quick: Bool, whether to pretrain and fine-tune for one epoch each
            (a check that the grid runs). Defaults to `False`.

    Returns:
        A list of row dicts: `"family"`, `"shift"`, `"method"`, `"seed"`,
        `"retained"`, `"new"`, `"overall"` (percent), one per fine-tuning
        plus a `"pretrained"` row per family, shift and seed (with
        `"logit_scale"`, `families.logit_scale` on the retained test
        inputs).
    """
    method_table = METHODS if method_table is None else method_table
    _check_names("families", families, families_lib.FAMILIES)
    _check_names("methods", methods, method_table)
    known = {s for f in families_lib.FAMILIES.values() for s in f.shifts}
    _check_names("shifts", shifts or known, known)

    def chosen(family):
        return [s for s in family.shifts if shifts is None or s in shifts]

    rows = []
    total = sum(
        len(chosen(families_lib.FAMILIES[name])) for name in families
    ) * len(seeds)
    progress = console.Progress(total)
    for family_name in families:
        family = families_lib.FAMILIES[family_name]
        if quick:
            family = dataclasses.replace(
                family, pretrain_epochs=1, finetune_epochs=1
            )
        for seed in seeds:
            old, family_tasks = families_lib.tasks(family, seed)
            pretrained = families_lib.pretrained(
                family, old, seed, directory=pretrained_dir
            )
            for shift in chosen(family):
                task = family_tasks[shift]
                progress.step(f"{family_name}, seed {seed}, {shift}")
                keys = {"family": family_name, "shift": shift, "seed": seed}
                rows.append(
                    dict(
                        keys,
                        method="pretrained",
                        logit_scale=families_lib.logit_scale(
                            pretrained, task.test_retained[0]
                        ),
                        **score(pretrained, task),
                    )
                )
                for name in methods:
                    student = finetune(
                        pretrained, family, task, method_table[name], seed
                    )
                    rows.append(dict(keys, method=name, **score(student, task)))
    return rows


def finetune(pretrained, family, task, method, seed):
    """The student that `method` fine-tunes from `pretrained` on `task`."""
    keras.utils.set_random_seed(seed)
    student = copy_model(pretrained)
    if method.l2_sp is not None:
        keras_sft.apply_l2_sp(student, method.l2_sp)
    if method.label_aware is not None:
        term, lambda_ = method.label_aware
        model = label_aware.LabelAwareSFT(student, term=term, lambda_=lambda_)
    else:
        options = {"lambda_": 0.0} if method.sft is None else method.sft
        # A short fit on arrays does not repay the teacher cache's pass.
        model = keras_sft.SFTModel(student, cache_teacher=False, **options)
    model.compile(
        optimizer=keras.optimizers.Adam(family.learning_rate),
        # Without XLA: compiling each of hundreds of small models costs
        # more than it saves. Many steps per call: a step of these models
        # costs less than Keras's per-call overhead.
        jit_compile=False,
        steps_per_execution=32,
    )
    x, y = task.train
    # The epochs as one pass over reshuffled copies: the batches of
    # `epochs=finetune_epochs` with shuffling, without the per-epoch cost
    # of Keras's data adapter.
    order = np.concatenate(
        [
            np.random.default_rng([seed, epoch]).permutation(len(x))
            for epoch in range(family.finetune_epochs)
        ]
    )
    model.fit(
        x[order],
        y[order],
        batch_size=family.batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    return model.student


def score(model, task):
    """`{"retained", "new", "overall"}` accuracies of `model` on `task`'s
    test sets, in percent; overall is over both sets together."""
    retained = families_lib.correct(model, task.test_retained)
    new = families_lib.correct(model, task.test_new)
    return {
        "retained": 100 * float(retained.mean()),
        "new": 100 * float(new.mean()),
        "overall": 100 * float(np.concatenate([retained, new]).mean()),
    }


def medians(rows):
    """The median over seeds of each accuracy, by family, shift and method.

    Returns:
        A dict from `(family, shift, method)` to a dict of `"retained"`,
        `"new"`, `"overall"` (and `"logit_scale"` for `"pretrained"`).
    """
    groups = {}
    for row in rows:
        key = (row["family"], row["shift"], row["method"])
        groups.setdefault(key, []).append(row)
    names = ("retained", "new", "overall", "logit_scale")
    return {
        key: {
            name: statistics.median(row[name] for row in members)
            for name in names
            if name in members[0]
        }
        for key, members in groups.items()
    }


def differences(rows, method, baseline="plain"):
    """`method`'s overall accuracy minus `baseline`'s on the same family,
    shift and seed, as a dict from `(family, shift, seed)`."""
    overall = {
        (row["family"], row["shift"], row["seed"], row["method"]): row[
            "overall"
        ]
        for row in rows
    }
    return {
        key[:3]: value - overall[(*key[:3], baseline)]
        for key, value in overall.items()
        if key[3] == method and (*key[:3], baseline) in overall
    }


def worst_cases(rows, methods, families=None):
    """Each method's worst difference to plain over `families` (all when
    `None`), shifts and seeds, and where it happened.

    Returns:
        A list of `(method, worst, (family, shift, seed), median)` tuples,
        best worst case first; `median` is the median difference.
    """
    result = []
    for method in methods:
        found = {
            key: value
            for key, value in differences(rows, method).items()
            if families is None or key[0] in families
        }
        if not found:
            continue
        where = min(found, key=found.get)
        result.append(
            (method, found[where], where, statistics.median(found.values()))
        )
    return sorted(result, key=lambda entry: -entry[1])


def choose(rows, candidates, *, on, held_out):
    """The candidate of best worst case on the families `on`, and its worst
    case on the families `held_out` (`worst_cases` entries, `None` where
    the rows have none)."""
    ranked = worst_cases(rows, candidates, on)
    if not ranked:
        return None, None
    chosen = ranked[0]
    confirmation = worst_cases(rows, [chosen[0]], held_out)
    return chosen, confirmation[0] if confirmation else None


def check_targets(rows, method):
    """Issue 25's targets for `method`, per family and shift, on medians
    over seeds.

    Everywhere: overall at least plain's minus `OVERALL_LOSS`. Where plain
    fine-tuning forgets `FORGETTING` points or more (the pretrained
    model's retained accuracy minus plain's): retained at least plain's
    plus `RETAINED_GAIN`, new at least plain's minus `NEW_COST`.

    Returns:
        A list of `(family, shift, passed, reason)` tuples; `reason` says
        which target failed, or `""`.
    """
    table = medians(rows)
    result = []
    for family, shift, name in table:
        if name != method or (family, shift, "plain") not in table:
            continue
        own = table[(family, shift, method)]
        plain = table[(family, shift, "plain")]
        pretrained = table.get((family, shift, "pretrained"))
        failures = []
        if own["overall"] < plain["overall"] - OVERALL_LOSS:
            failures.append(
                f"overall {own['overall']:.1f} < plain "
                f"{plain['overall']:.1f} - {OVERALL_LOSS:g}"
            )
        forgets = (
            pretrained is not None
            and pretrained["retained"] - plain["retained"] >= FORGETTING
        )
        if forgets and own["retained"] < plain["retained"] + RETAINED_GAIN:
            failures.append(
                f"retained {own['retained']:.1f} < plain "
                f"{plain['retained']:.1f} + {RETAINED_GAIN:g}"
            )
        if forgets and own["new"] < plain["new"] - NEW_COST:
            failures.append(
                f"new {own['new']:.1f} < plain {plain['new']:.1f} - "
                f"{NEW_COST:g}"
            )
        result.append((family, shift, not failures, "; ".join(failures)))
    return result


def family_table(rows, family):
    """One family's Markdown table: per shift and method, the medians over
    seeds of retained, new and overall accuracy and of the difference to
    plain's overall, and the worst seed's difference."""
    table = medians(rows)
    seeds = len({row["seed"] for row in rows if row["family"] == family})
    lines = [
        f"`{family}`: median over {seeds} seeds, test accuracy (%); "
        "vs plain: overall minus plain fine-tuning's on the same seed "
        "(median, worst seed).",
        "",
        "| shift | method | retained | new | overall | vs plain | worst |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fam, shift, method in table:
        if fam != family:
            continue
        entry = table[(fam, shift, method)]
        found = [
            value
            for key, value in differences(rows, method).items()
            if key[:2] == (family, shift)
        ]
        versus = worst = ""
        if found and method not in ("plain", "pretrained"):
            versus = f"{statistics.median(found):+.1f}"
            worst = f"{min(found):+.1f}"
        if method == "pretrained":
            method = f"pretrained (logit std {entry['logit_scale']:.1f})"
        lines.append(
            f"| {shift} | {method} | {entry['retained']:.1f} | "
            f"{entry['new']:.1f} | {entry['overall']:.1f} | {versus} | "
            f"{worst} |"
        )
    return "\n".join(lines) + "\n"


def worst_case_table(rows, methods, families=None):
    """`worst_cases` as a Markdown table."""
    lines = [
        "| method | worst vs plain | where (family, shift, seed) | "
        "median vs plain |",
        "| --- | ---: | --- | ---: |",
    ]
    for method, worst, where, median in worst_cases(rows, methods, families):
        lines.append(
            f"| {method} | {worst:+.1f} | {', '.join(map(str, where))} | "
            f"{median:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def targets_table(rows, method):
    """`check_targets` as a Markdown table."""
    lines = ["| family | shift | targets |", "| --- | --- | --- |"]
    for family, shift, passed, reason in check_targets(rows, method):
        lines.append(f"| {family} | {shift} | {'met' if passed else reason} |")
    return "\n".join(lines) + "\n"


def report(rows, *, choose_on, held_out):
    """The Markdown report of `rows`: each family's table, the worst cases
    against plain fine-tuning, the choice on the families `choose_on`
    confirmed on `held_out`, and the targets at `SFTModel`'s defaults."""
    present = list(dict.fromkeys(row["family"] for row in rows))
    methods = [
        name
        for name in dict.fromkeys(row["method"] for row in rows)
        if name not in ("pretrained", "plain")
    ]
    parts = [family_table(rows, family) for family in present]
    for title, families in (
        ("every family", None),
        (", ".join(choose_on), choose_on),
        (", ".join(held_out), held_out),
    ):
        parts.append(
            f"Worst case over {title} (shifts and seeds included), overall "
            "accuracy minus plain fine-tuning's (points):\n\n"
            + worst_case_table(rows, methods, families)
        )
    # The defaults are `SFTModel`'s: L2-SP is a baseline, not a candidate.
    chosen, confirmation = choose(
        rows,
        [name for name in methods if name.startswith("SFT")],
        on=choose_on,
        held_out=held_out,
    )
    if chosen is not None:
        line = (
            f"Best worst case of SFT on {', '.join(choose_on)}: {chosen[0]} "
            f"({chosen[1]:+.1f} points)"
        )
        if confirmation is not None:
            line += f"; on {', '.join(held_out)}: {confirmation[1]:+.1f}"
        parts.append(line + ".\n")
    if "SFT defaults" in methods:
        parts.append(
            "Issue 25's targets at the defaults (medians over seeds):\n\n"
            + targets_table(rows, "SFT defaults")
        )
    return "\n".join(parts)


def save_rows(rows, path):
    """Writes `rows` as JSON to `path`."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as file:
        json.dump(rows, file)


def load_rows(paths):
    """The rows of the JSON files `paths`, concatenated."""
    rows = []
    for path in paths:
        with open(path) as file:
            rows += json.load(file)
    return rows


def _check_names(argument, names, known):
    """Raises `ValueError` unless `names` is a non-empty subset of `known`."""
    if not names or any(name not in known for name in names):
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected names of "
            f"{tuple(known)}. Received: {argument}={tuple(names)!r}"
        )
