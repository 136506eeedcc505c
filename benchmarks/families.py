"""Model families for choosing `SFTModel`'s defaults, and their new tasks.

A family is a small model, how it is pretrained and the new tasks it is
fine-tuned on. The families differ in architecture and in the scale of
their pretrained logits, so that a default chosen on some of them is
tested on another:

- `mlp`, `mlp_long`: `examples.lib.classifiers`' MLP on scikit-learn's
  8x8 digits, pretrained for 30 epochs (the forgetting benchmark's) or
  300 (logits about three times larger);
- `cnn_bn`, `cnn_bn_smooth`: a CNN with BatchNorm on the digits,
  pretrained with or without label smoothing 0.1 (which bounds the
  logits);
- `lm`: a one-block causal transformer over characters, pretrained on
  CPython's bundled documentation prose (`pydoc_data.topics`) and
  fine-tuned on Python source of the standard library or on the prose
  enciphered with ROT13, scored by next-character accuracy.

Image tasks are the forgetting benchmark's covered shifts
(`benchmarks.experiments.forgetting_benchmark.SHIFTS`): the model is
pretrained on every class of the first half of the digits' train split
and fine-tuned
on classes 0-4 of the second half in a new domain; retained is classes
5-9 of the test split as they were, new is classes 0-4 of the test split
in the new domain. Text tasks: retained is held-out prose, new is
held-out text of the new domain. Everything is offline.
"""

import codecs
import dataclasses
import os
from pydoc_data import topics

import keras
import keras_hub
import numpy as np

from benchmarks.experiments import forgetting_benchmark
from examples.lib import arrays
from examples.lib import classifiers
from keras_sft import data

IMAGE_SHIFTS = ("translate", "rotate", "invert", "noise")
TEXT_SHIFTS = ("python", "rot13")

# The characters a text model reads and predicts: newline, printable
# ASCII, then one id for everything else.
_CHARACTERS = "\n" + "".join(chr(code) for code in range(32, 127))
VOCABULARY_SIZE = len(_CHARACTERS) + 1
SEQUENCE_LENGTH = 32
# Standard-library modules of CPython 3.11 whose source is the `python`
# shift's text: plain, comment- and docstring-rich Python.
_PYTHON_MODULES = (
    "argparse",
    "calendar",
    "difflib",
    "fractions",
    "pprint",
    "shlex",
    "string",
    "textwrap",
)


@dataclasses.dataclass(frozen=True)
class Task:
    """The arrays of one new task, each an `(x, y)` pair.

    `train` is the new labelled data; `test_retained` scores what the
    pretrained model knew, `test_new` the new task.
    """

    train: tuple
    test_retained: tuple
    test_new: tuple


@dataclasses.dataclass(frozen=True)
class Family:
    """A model, how it is pretrained and fine-tuned, and its shifts.

    Args:
        name: String, the family's name.
        domain: String, `"digits"` or `"text"`: where its data comes from.
        model: String, `"mlp"`, `"cnn_bn"` or `"lm"`.
        pretrain_epochs: Int, epochs of pretraining.
        label_smoothing: Float, the label smoothing of pretraining.
        finetune_epochs: Int, epochs of each fine-tuning.
        batch_size: Int, the batch size of both.
        learning_rate: Float, Adam's learning rate of both.
    """

    name: str
    domain: str
    model: str
    pretrain_epochs: int
    label_smoothing: float = 0.0
    finetune_epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 1e-3

    @property
    def shifts(self):
        """The names of the family's new tasks."""
        return IMAGE_SHIFTS if self.domain == "digits" else TEXT_SHIFTS


FAMILIES = {
    family.name: family
    for family in (
        Family("mlp", "digits", "mlp", pretrain_epochs=30),
        Family("mlp_long", "digits", "mlp", pretrain_epochs=300),
        Family(
            "cnn_bn", "digits", "cnn_bn", pretrain_epochs=60, finetune_epochs=40
        ),
        Family(
            "cnn_bn_smooth",
            "digits",
            "cnn_bn",
            pretrain_epochs=60,
            label_smoothing=0.1,
            finetune_epochs=40,
        ),
        Family(
            "lm",
            "text",
            "lm",
            pretrain_epochs=10,
            finetune_epochs=12,
            learning_rate=3e-3,
        ),
    )
}


def tasks(family, seed):
    """The pretraining data and the new tasks of `family` for `seed`.

    Returns:
        A tuple `(old, tasks)`: `old`, the pretraining `(x, y)`, and
        `tasks`, a dict from shift name to `Task`.
    """
    if family.domain == "digits":
        return _digit_tasks(seed)
    return _text_tasks(seed)


def build(family, seed):
    """A new, untrained model of `family`."""
    if family.model == "mlp":
        return classifiers.build_classifier(
            "mlp", input_shape=(8, 8, 1), num_classes=10, seed=seed
        )
    if family.model == "cnn_bn":
        return _cnn_bn(seed)
    return _transformer_lm(seed)


def pretrained(family, old, seed, *, directory=None):
    """`family`'s model pretrained on `old`, read from `directory` when a
    previous run saved it there (saved there otherwise)."""
    path = None
    if directory:
        path = os.path.join(directory, f"{family.name}_seed{seed}.keras")
        if os.path.exists(path):
            return keras.models.load_model(path)
    keras.utils.set_random_seed(seed)
    model = build(family, seed)
    x, y = old
    num_classes = model.output_shape[-1]
    model.compile(
        optimizer=keras.optimizers.Adam(family.learning_rate),
        # One-hot targets: Keras's sparse loss has no label smoothing.
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=family.label_smoothing
        ),
        steps_per_execution=32,
        jit_compile=False,
    )
    model.fit(
        x,
        keras.ops.one_hot(y, num_classes),
        batch_size=family.batch_size,
        epochs=family.pretrain_epochs,
        verbose=0,
    )
    if path:
        os.makedirs(directory, exist_ok=True)
        model.save(path)
    return model


def logit_scale(model, x):
    """The mean over examples (and positions) of the standard deviation of
    `model`'s logits over units: what `normalized_mse` divides by."""
    logits = keras.ops.convert_to_numpy(predict(model, x))
    return float(logits.std(axis=-1).mean())


def predict(model, x):
    """`model`'s outputs on `x` in inference mode, a few batches at once."""
    return keras.ops.concatenate(
        [
            model(x[start : start + 512], training=False)
            for start in range(0, len(x), 512)
        ]
    )


def correct(model, pair):
    """Whether each prediction (each example, or each position of each
    sequence) of `model` on `pair`'s inputs equals its label, flattened."""
    x, y = pair
    predicted = np.argmax(keras.ops.convert_to_numpy(predict(model, x)), -1)
    return (predicted == y).reshape(-1)


def _digit_tasks(seed):
    """The digits' pretraining data and the covered shifts' tasks."""
    pool = arrays.to_arrays(data.load("digits", split="train")[0])
    test = arrays.to_arrays(data.load("digits", split="test")[0])
    half = len(pool[0]) // 2
    old = pool[0][:half], pool[1][:half]
    new_pool = pool[0][half:], pool[1][half:]
    first, second = np.arange(5), np.arange(5, 10)
    result = {}
    for name in IMAGE_SHIFTS:
        transform = forgetting_benchmark.SHIFTS[name].transform
        new_x, new_y = _where(new_pool, first)
        test_x, test_y = _where(test, first)
        result[name] = Task(
            train=(transform(new_x, seed=seed), new_y),
            test_retained=_where(test, second),
            test_new=(transform(test_x, seed=seed + 1), test_y),
        )
    return old, result


def _where(pair, classes):
    """The samples of `pair` whose label is in `classes`."""
    keep = np.isin(pair[1], classes)
    return pair[0][keep], pair[1][keep]


def _text_tasks(seed):
    """The prose to pretrain on and the text shifts' tasks.

    The prose is cut in three: pretraining (the first 80%), the `rot13`
    shift's new text (the next 10%, enciphered) and the test (the rest);
    the Python source in two: fine-tuning (80%) and test.
    """
    prose = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    python = _python_source()
    pretraining, rest = _cut(prose, 0.8)
    new_prose, test_prose = _cut(rest, 0.5)
    python_train, python_test = _cut(python, 0.8)
    rng = np.random.default_rng(seed)
    old = _windows(pretraining, 8192, rng)
    retained = _windows(test_prose, 1024, np.random.default_rng(0))
    rot13 = codecs.encode(new_prose, "rot13")
    return old, {
        "python": Task(
            train=_windows(python_train, 1024, rng),
            test_retained=retained,
            test_new=_windows(python_test, 1024, np.random.default_rng(1)),
        ),
        "rot13": Task(
            train=_windows(rot13, 1024, rng),
            test_retained=retained,
            test_new=_windows(
                codecs.encode(test_prose, "rot13"),
                1024,
                np.random.default_rng(0),
            ),
        ),
    }


def _python_source():
    """The source of `_PYTHON_MODULES`, read from this Python's library."""
    directory = os.path.dirname(os.__file__)
    texts = []
    for module in _PYTHON_MODULES:
        with open(os.path.join(directory, f"{module}.py")) as file:
            texts.append(file.read())
    return "\n\n".join(texts)


def _cut(text, fraction):
    """`text` cut in two at `fraction` of its length."""
    index = int(len(text) * fraction)
    return text[:index], text[index:]


def _encode(text):
    """`text` as an int32 array of character ids."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(128, len(_CHARACTERS), dtype=np.int32)
    table[[ord(c) for c in _CHARACTERS]] = np.arange(len(_CHARACTERS))
    ids = np.full(len(codes), len(_CHARACTERS), dtype=np.int32)
    ascii_codes = codes < 128
    ids[ascii_codes] = table[codes[ascii_codes]]
    return ids


def _windows(text, count, rng):
    """`count` windows of `text` at random offsets: `(x, y)`, `y` the next
    character of each position of `x`."""
    ids = _encode(text.replace("\t", "    "))
    starts = rng.integers(0, len(ids) - SEQUENCE_LENGTH - 1, count)
    windows = np.stack([ids[s : s + SEQUENCE_LENGTH + 1] for s in starts])
    return windows[:, :-1], windows[:, 1:]


def _cnn_bn(seed):
    """Two 3x3 convolutions with BatchNorm, global pooling, logits."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input((8, 8, 1), name="image")
    hidden = inputs
    for index, filters in enumerate((16, 32)):
        hidden = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=init(seed + index),
        )(hidden)
        hidden = keras.layers.BatchNormalization()(hidden)
        hidden = keras.layers.ReLU()(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(
        10, kernel_initializer=init(seed + 2), dtype="float32"
    )(hidden)
    return keras.Model(inputs, outputs, name="cnn_bn")


def _transformer_lm(seed):
    """A one-block causal transformer over characters, logits per position."""
    init = keras.initializers.GlorotUniform
    tokens = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name="tokens")
    hidden = keras_hub.layers.TokenAndPositionEmbedding(
        VOCABULARY_SIZE,
        SEQUENCE_LENGTH,
        64,
        embeddings_initializer=init(seed),
    )(tokens)
    # Without an encoder sequence the decoder block is causal self-attention.
    hidden = keras_hub.layers.TransformerDecoder(
        128, 4, kernel_initializer=init(seed + 1)
    )(hidden)
    outputs = keras.layers.Dense(
        VOCABULARY_SIZE, kernel_initializer=init(seed + 2), dtype="float32"
    )(hidden)
    return keras.Model(tokens, outputs, name="lm")
