"""Flags shared by the binaries, and the set-up and data they describe.

Importing this module defines the flags; each binary adopts them as key
flags, so its `--helpshort` lists them. Every flag that two binaries use
is defined here (or, for the experiments, in `experiment_flags`), once.
"""

import contextlib
import dataclasses
import math
import os
import re

import keras
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app
from absl import flags

from examples.lib import arrays
from examples.lib import cluster
from examples.lib import output_paths
from examples.lib import run_record
from examples.lib import training
from examples.lib.run_lock import RunLock
from examples.lib.training_config import TrainingConfig
from keras_sft import data
from keras_sft import distances
from keras_sft import strategy as strategy_lib

PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")

DATASET = flags.DEFINE_string(
    "dataset",
    "digits",
    "Dataset: 'digits' (scikit-learn's bundled 8x8 handwritten digits, "
    "offline) or a TensorFlow Datasets image-classification name such as "
    "'mnist', 'fashion_mnist' or 'cifar10' (downloaded into --data_dir).",
)
DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "TensorFlow Datasets data directory; TFDS's default when unset. "
    "Unused for 'digits'.",
)
TRAIN_SPLIT = flags.DEFINE_string(
    "train_split",
    "train",
    "Split to train on, in TFDS syntax ('train', 'train[:50%]').",
)
TEST_SPLIT = flags.DEFINE_string(
    "test_split",
    "test",
    "Split to validate and evaluate on, in TFDS syntax.",
)
CLASSES = flags.DEFINE_list(
    "classes",
    [],
    "Classes to keep, as labels or ranges ('0-4', '0,2,7'); all when empty.",
)
SHIFT = flags.DEFINE_enum(
    "shift",
    "none",
    data.SHIFTS,
    "Domain shift applied to the images: 'none', 'invert' (1 - image, a "
    "negative) or 'rot90' (rotated by 90 degrees).",
)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    32,
    "Global batch size (split across the replicas of --strategy).",
    lower_bound=1,
)
EPOCHS = flags.DEFINE_integer(
    "epochs", 10, "Number of training epochs.", lower_bound=1
)
LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 1e-3, "Adam's learning rate (> 0)."
)
DISTANCE = flags.DEFINE_enum(
    "distance",
    "mse",
    tuple(distances.DISTANCES),
    "SFT's consistency distance between teacher and student outputs. The "
    "examples' tables are measured with 'mse' (the --lambda values are "
    "for it); keras_sft.SFTModel's own default is 'normalized_mse'.",
)
SEED = flags.DEFINE_integer(
    "seed",
    0,
    "Seed of the weights, of Keras's randomness and of the shuffling.",
    lower_bound=0,
)
STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    strategy_lib.STRATEGIES,
    "tf.distribute strategy: 'default' (one device), 'mirrored' (all local "
    "GPUs), 'multi_worker' (cluster from TF_CONFIG) or 'tpu'.",
)
COLLECTIVE_TIMEOUT = flags.DEFINE_float(
    "collective_timeout",
    600.0,
    "With --strategy=multi_worker: seconds a worker waits for the other "
    "workers to start, and for each collective operation to complete, "
    "before it stops with an error (TensorFlow's heartbeats find a worker "
    "that died within about 10 s). Longer than the chief's longest write "
    "between two steps and the slowest worker's start.",
    lower_bound=1.0,
    upper_bound=86400.0,
)
TPU = flags.DEFINE_string(
    "tpu",
    None,
    "TPU address for --strategy=tpu: a grpc:// address or a TPU name; "
    "'local' (the default) on a TPU VM.",
)
MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "none",
    PRECISIONS,
    "Keras dtype policy for new layers: 'none' (float32), 'mixed_float16' "
    "(GPU) or 'mixed_bfloat16' (TPU, recent CPUs).",
)
JIT_COMPILE = flags.DEFINE_bool(
    "jit_compile", False, "Compile the train and test steps with XLA."
)
DETERMINISTIC = flags.DEFINE_bool(
    "deterministic",
    False,
    "Turn on TensorFlow's op determinism "
    "(tf.config.experimental.enable_op_determinism): with the same --seed, "
    "two runs give bit-identical weights, at some cost in speed on GPU.",
)
ANCHOR_COUNT = flags.DEFINE_integer(
    "anchor_count",
    500,
    "Number of unlabeled inputs from the pretraining distribution (drawn "
    "with --seed) on which SFT computes its consistency term, with "
    "finetune's --anchor_split and the demo's anchor rows.",
    lower_bound=1,
)
RETAINED_SPLIT = flags.DEFINE_string(
    "retained_split",
    None,
    "Split of --dataset, in TFDS syntax, read without --shift (the domain "
    "the pretrained model knew): the old task whose accuracy finetune "
    "reports at each epoch's end as retained_accuracy, beside "
    "teacher_agreement (keras_sft.ForgettingMonitor: progress bar, "
    "--log_dir, history), and select_lambda scores as retained accuracy; "
    "none when unset or empty.",
)
RETAINED_CLASSES = flags.DEFINE_list(
    "retained_classes",
    [],
    "Classes of --retained_split to keep, as labels or ranges ('5-9'): "
    "the old classes the new data lacks; all when empty.",
)
# What every binary reads, the segmentation experiment included (its
# --helpshort lists these; the others adopt the whole module).
CORE_FLAGS = (
    DATASET,
    BATCH_SIZE,
    EPOCHS,
    LEARNING_RATE,
    SEED,
    STRATEGY,
    COLLECTIVE_TIMEOUT,
    TPU,
    MIXED_PRECISION,
    JIT_COMPILE,
    DETERMINISTIC,
)
OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace an existing --output (and finetune's --export_dir); without "
    "it an existing one is refused.",
)
CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir",
    None,
    "Directory where keras.callbacks.ModelCheckpoint writes the trained "
    "model after each epoch (epoch_001.keras, ...); none when unset.",
)
# absl.logging already defines --log_dir (for its log files, which it
# writes only on request); the training binaries write TensorBoard logs there.
flags.declare_key_flag("log_dir")
flags.FLAGS["log_dir"].help = (
    "TensorBoard log directory of pretrain and finetune (and absl's log "
    "files, if any); no TensorBoard logs when empty."
)

OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "The .keras file pretrain writes the trained classifier to, or finetune "
    "the fine-tuned student.",
)
flags.register_validator(
    OUTPUT,
    lambda path: path is None or path.endswith(".keras"),
    message="--output must end in .keras",
)


def refuse_existing(flag_holder):
    """Registers a validator: the path flag's target must not exist yet,
    unless `--overwrite` is given."""
    name = flag_holder.name
    flags.register_multi_flags_validator(
        [flag_holder, OVERWRITE],
        lambda values: (
            values[name] is None
            or values["overwrite"]
            or not tf.io.gfile.exists(values[name])
        ),
        message=f"--{name} exists already; pass --overwrite to replace it",
    )


refuse_existing(OUTPUT)


def unset_or_file(path):
    """Flag validator: `path` is unset or an existing file."""
    return path is None or os.path.isfile(path)


PRETRAINED = flags.DEFINE_string(
    "pretrained",
    None,
    "The pretrained .keras classifier (logits output) that finetune and "
    "select_lambda start from.",
)
flags.register_validator(
    PRETRAINED,
    unset_or_file,
    message="--pretrained must be an existing .keras file",
)

_CLASS_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_classes(values):
    """Turns `["0-4", "7"]` into `[0, 1, 2, 3, 4, 7]`; raises `ValueError`."""
    classes = []
    for value in values:
        match = _CLASS_RANGE.match(value.strip())
        if not match:
            raise ValueError(
                "Expected a label or a range such as '0-4'. "
                f"Received: {value!r}"
            )
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise ValueError(
                f"Expected an increasing range. Received: {value!r}"
            )
        classes.extend(range(first, last + 1))
    return sorted(set(classes))


def nonnegative_floats(values):
    """Flag validator: every string in `values` is a float >= 0."""
    try:
        return all(float(value) >= 0 for value in values)
    except ValueError:
        return False


def positive_floats(values):
    """The floats > 0 among the strings `values` (0 is plain fine-tuning,
    which the experiments run anyway)."""
    return [float(value) for value in values if float(value) > 0]


def valid_classes(values):
    """Flag validator: `values` parse with `parse_classes`."""
    try:
        parse_classes(values)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from error
    return True


def _known_dataset(name):
    """Flag validator: `name` is 'digits' or a registered TFDS builder."""
    # Drop an optional config or version ('mnist:3.*.*', 'cifar10/plain').
    return name == "digits" or re.split("[:/]", name)[0] in tfds.list_builders(
        with_community_datasets=False
    )


flags.register_validator(CLASSES, valid_classes)
flags.register_validator(RETAINED_CLASSES, valid_classes)
flags.register_validator(
    LEARNING_RATE,
    lambda rate: math.isfinite(rate) and rate > 0,
    message="--learning_rate must be a finite number > 0",
)
flags.register_validator(
    DATASET,
    _known_dataset,
    message="--dataset must be 'digits' or a TensorFlow Datasets name.",
)


def run(main, *, preset=None):
    """`app.run(main)`, reporting expected failures on one line.

    Bad data, unreadable files and a diverging loss raise `ValueError`,
    `OSError` or `RuntimeError` with a message that names the problem and
    the fix, and TensorFlow's runtime errors (a label out of range found
    during training) carry one line among a graph trace; the user gets
    that line and exit status 1, not a traceback. Other exceptions are bugs
    and keep their traceback. TensorFlow's retracing warnings are dropped
    (`_not_a_retracing_warning`); its other warnings stay.

    Args:
        main: The binary's `main(argv)`.
        preset: Dict from flag names to the defaults this binary gives them
            (one of `examples.lib.presets`), set before parsing so that
            `--help` shows them; `None` keeps the flags' own defaults.
    """
    for name, value in (preset or {}).items():
        flags.FLAGS.set_default(name, value)
    tf.get_logger().addFilter(_not_a_retracing_warning)
    app.run(one_line_errors(main))


def _not_a_retracing_warning(record):
    """Logging filter: drops TensorFlow's "triggered tf.function
    retracing" warning.

    The experiments train a new model per row and score each with
    `predict`: Keras builds a new predict function for each model (its
    variables are new) and traces it twice, for the full batches and for
    the smaller last one. TensorFlow counts traces by the function's code,
    not by the function, so it sees 2 traces in 3 calls of "one" function
    and warns of retracing. Each trace is needed, and they cost about
    0.15 s per model against about 10 s of training per row of the demo:
    nothing to fix, and to a user the warning reads as a fault of the run.
    """
    return "triggered tf.function retracing" not in record.getMessage()


def one_line_errors(main):
    """`main` reporting the expected failures (see `run`) as
    `SystemExit("Error: ...")`: one line and exit status 1."""

    def main_with_one_line_errors(argv):
        try:
            return main(argv)
        except (ValueError, OSError, RuntimeError) as error:
            raise SystemExit(f"Error: {error}") from None
        except tf.errors.OpError as error:
            if STRATEGY.value == "multi_worker" and lost_worker(error):
                raise SystemExit(
                    f"Error: lost a worker of the cluster "
                    f"({type(error).__name__}: {lost_worker_reason(error)}); "
                    "relaunch the whole job, every worker with the same "
                    "command (with --backup_dir it resumes from the last "
                    "backup)"
                ) from None
            raise SystemExit(
                f"Error: {op_error_line(error)} ({type(error).__name__})"
            ) from None

    return main_with_one_line_errors


# The errors of a collective operation whose peer died, hung or restarted.
_LOST_WORKER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


def lost_worker(error):
    """Whether the `tf.errors.OpError` `error` of a multi-worker run says
    that another worker is gone: TensorFlow's heartbeats missed it, a
    connection to it failed, or a collective operation timed out."""
    return isinstance(error, _LOST_WORKER_ERRORS) or (
        "Collective ops is aborted" in error.message
    )


def lost_worker_reason(error):
    """What TensorFlow says of a lost worker, on one line: "The following
    tasks are unhealthy (stopped sending heartbeats):
    /job:worker/replica:0/task:1" rather than the graph trace around it."""
    lines = [line.strip() for line in error.message.splitlines()]
    lines = [line for line in lines if line]
    for index, line in enumerate(lines):
        if "aborted by:" not in line and "timed out" not in line:
            continue
        reason = line.split("aborted by:", 1)[-1]
        # Drop TensorFlow's `{{function_node ...}}` and `[Op:...]` tags.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", reason).strip()
        # Its first sentence; TensorFlow's advice to debug follows.
        reason = reason.split(". ")[0].removesuffix(".")
        if reason.endswith(":") and index + 1 < len(lines):
            reason = f"{reason} {lines[index + 1]}"  # the tasks it names
        remote = re.search(r"from remote target (\S+?):? ", error.message)
        if remote and remote.group(1) not in reason:
            reason = f"{reason}, from {remote.group(1)}"
        return reason
    return op_error_line(error)


def op_error_line(error):
    """The line of a `tf.errors.OpError` that says what went wrong
    ("Received a label value of 12 which is outside the valid range of
    [0, 10)"), without the graph trace around it."""
    lines = [line.strip() for line in error.message.splitlines()]
    lines = [
        line
        for line in lines
        if line
        and not line.startswith(("File ", "[[", "Detected at node"))
        and line != "Graph execution error:"
    ]
    return lines[-1] if lines else type(error).__name__


def refuse_arguments(argv):
    """Raises `app.UsageError` if `argv` holds more than the program name."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")


def set_up():
    """Seeds Keras, sets determinism and dtype policy, returns the strategy."""
    set_determinism()
    keras.utils.set_random_seed(SEED.value)
    keras.config.set_dtype_policy(
        "float32" if MIXED_PRECISION.value == "none" else MIXED_PRECISION.value
    )
    options = {}
    if STRATEGY.value == "multi_worker":
        options["collective_timeout"] = COLLECTIVE_TIMEOUT.value
    try:
        return strategy_lib.build_strategy(
            STRATEGY.value, tpu=TPU.value, **options
        )
    except (ValueError, tf.errors.OpError) as error:
        if STRATEGY.value != "tpu":
            raise
        reason = str(error).strip().splitlines()[0]
        raise RuntimeError(
            f"--strategy=tpu: no TPU at --tpu={TPU.value or 'local'} "
            f"({reason}); run on a TPU VM or pass --tpu=grpc://ADDRESS"
        ) from None


def set_determinism():
    """Turns on TensorFlow's op determinism if `--deterministic` says so."""
    if DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()


# The shared flags that change what training computes (see
# `claimed_outputs`): the data, the optimisation and the seed.
TRAINING_FLAGS = (
    "dataset",
    "train_split",
    "classes",
    "shift",
    "batch_size",
    "epochs",
    "learning_rate",
    "seed",
    "mixed_precision",
)


def training_config(**overrides):
    """The `TrainingConfig` the shared flags describe, with `overrides`."""
    config = TrainingConfig(
        epochs=EPOCHS.value,
        batch_size=BATCH_SIZE.value,
        learning_rate=LEARNING_RATE.value,
        seed=SEED.value,
        jit_compile=JIT_COMPILE.value,
        log_dir=flags.FLAGS.log_dir or None,
        checkpoint_dir=CHECKPOINT_DIR.value,
        distance=DISTANCE.value,
    )
    return dataclasses.replace(config, **overrides)


def load_train_and_test():
    """`load_split` of `--train_split` and `--test_split`.

    Returns `(train, test, num_classes)`.
    """
    train, num_classes = load_split(TRAIN_SPLIT.value)
    return train, load_test_split(), num_classes


def load_test_split():
    """`load_split` of `--test_split`, refused if it is empty (training
    would run without validation, and accuracies would be NaN)."""
    test, _ = load_split(TEST_SPLIT.value)
    if not any(True for _ in test.take(1)):
        selection = f" with --classes={','.join(CLASSES.value)}"
        raise ValueError(
            f"The dataset is empty: --test_split={TEST_SPLIT.value} of "
            f"--dataset={DATASET.value}"
            f"{selection if CLASSES.value else ''} holds no example; pass "
            "a split (and classes) with examples"
        )
    return test


def load_unshifted(split):
    """The unbatched `--dataset` split as it is, without `--classes` or
    `--shift` (the pretraining distribution).

    Returns `(dataset, num_classes)`.
    """
    return data.load(DATASET.value, split=split, data_dir=DATA_DIR.value)


def load_retained():
    """`load_unshifted(--retained_split)` restricted to
    `--retained_classes` (when given), or `None` if `--retained_split` is
    unset; refused if it is empty."""
    if not RETAINED_SPLIT.value:
        return None
    dataset, _ = load_unshifted(RETAINED_SPLIT.value)
    if RETAINED_CLASSES.value:
        classes = parse_classes(RETAINED_CLASSES.value)
        dataset = data.select_classes(dataset, classes)
    if not any(True for _ in dataset.take(1)):
        classes = ",".join(RETAINED_CLASSES.value)
        raise ValueError(
            f"The retained sample is empty: --retained_split="
            f"{RETAINED_SPLIT.value} of --dataset={DATASET.value}"
            f"{f' with --retained_classes={classes}' if classes else ''} "
            "holds no example; pass a split (and classes) with examples"
        )
    return dataset


def sample_unshifted(split):
    """`--anchor_count` inputs of `load_unshifted(split)`, drawn by
    `--seed`; `None` if `split` is unset."""
    if not split:
        return None
    dataset, _ = load_unshifted(split)
    return arrays.sample_inputs(dataset, ANCHOR_COUNT.value, seed=SEED.value)


def load_split(split):
    """The unbatched `--dataset` split with `--classes` and `--shift`.

    Returns `(dataset, num_classes)`.
    """
    dataset, num_classes = load_unshifted(split)
    if CLASSES.value:
        dataset = data.select_classes(dataset, parse_classes(CLASSES.value))
    return data.shift_domain(dataset, SHIFT.value), num_classes


def training_batches(dataset):
    """`training.shuffled_batches` of `dataset` by `--seed` and
    `--batch_size`: returns `(batches, epoch_shuffle)`."""
    return training.shuffled_batches(
        dataset, seed=SEED.value, batch_size=BATCH_SIZE.value
    )


def evaluation_batches(dataset):
    """`--batch_size` batches in the dataset's order."""
    return data.batch(dataset, batch_size=BATCH_SIZE.value)


@contextlib.contextmanager
def claimed_outputs(
    *,
    files=(),
    directories=(),
    backup_dir=None,
    training_flags=(),
    written=(),
):
    """Makes the outputs of a run its own, before it trains.

    Under `--strategy=multi_worker` only the chief does this, and only the
    chief writes the outputs (the same paths on the shared filesystem
    every worker reads): on the other workers this does nothing. Every
    output path (with `--checkpoint_dir` and `--log_dir`) is checked
    for writability, its parent created, so a bad one fails at once quoting
    the flag and the path. The `files`, `directories` and `backup_dir` are
    locked (`RunLock`) while inside, so a concurrent run with the same
    paths fails at start; temporary files a killed run left beside them are
    removed; and `backup_dir` is accepted only as the backup of the same
    run: one whose `--pretrained` file and `training_flags` are the same
    (`run_record.claim_backup`).

    Args:
        files: Sequence of flag holders of output files (`OUTPUT`).
        directories: Sequence of flag holders of directories the run writes
            whole (`--export_dir`).
        backup_dir: Flag holder of the backup directory, or `None`.
        training_flags: Sequence of the names of the flags that change
            what training computes, recorded in the backup.
        written: Sequence of flag holders of other directories the run
            writes into (`--cache_dir`): checked, not locked.
    """
    if not cluster.is_chief(STRATEGY.value):
        yield
        return
    owned = [*directories, *([] if backup_dir is None else [backup_dir])]
    checked = [(f.name, f.value, False) for f in files]
    checked += [(f.name, f.value, True) for f in (*owned, *written)]
    checked += [
        (CHECKPOINT_DIR.name, CHECKPOINT_DIR.value, True),
        ("log_dir", flags.FLAGS.log_dir, True),
    ]
    for name, path, directory in checked:
        if path:
            output_paths.check_writable(
                path, flag=f"--{name}", directory=directory
            )
    with contextlib.ExitStack() as stack:
        for holder in (*files, *owned):
            if holder.value:
                flag = f"--{holder.name}"
                stack.enter_context(RunLock(holder.value, flag=flag))
                output_paths.remove_stale_temporaries(holder.value)
        if backup_dir is not None and backup_dir.value:
            record = {
                "pretrained_sha256": run_record.file_sha256(PRETRAINED.value),
                **{name: flags.FLAGS[name].value for name in training_flags},
            }
            run_record.claim_backup(
                backup_dir.value, record, flag=f"--{backup_dir.name}"
            )
        yield
