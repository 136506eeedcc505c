"""Private: the one batch format that `SFTModel`'s steps read.

Beside Keras's `(x, y, sample_weight)`, `fit` may hand the step the
teacher's outputs computed before training (a `predict` pass under a
strategy), each example's position (for the first epoch's cache), or a
batch of anchor inputs with the mode of their term. All of them travel in
`x`, replaced by one dict with a reserved key for the inputs (`pack`,
`with_anchors`), so that Keras's array handling (shuffling,
`validation_split`, batching) and its distribution carry them along with
their examples. Not in `y`: Keras matches `sample_weight` to the
structure of `y`.

`keras_sft.cache_teacher_outputs` yields its own public format instead,
4-tuples `(x, y, sample_weight, teacher_outputs)`; Keras's batches have at
most three parts, so the two cannot be confused. `unpack` reads every kind
of batch into one `Batch`.
"""

import collections

import keras

ANCHOR_MODES = ("replace", "both")

_INPUTS = "_keras_sft_inputs"
_TEACHER_OUTPUTS = "_keras_sft_teacher_outputs"
_EXAMPLE_INDEX = "_keras_sft_example_index"
# One key per mode: the mode then lives in the batch's structure, and a
# second `fit` with the other mode retraces the step instead of reusing
# the first one's graph.
_ANCHORS = {mode: f"_keras_sft_anchors_{mode}" for mode in ANCHOR_MODES}

# A step's batch. `teacher_outputs` are the teacher's outputs on `x` where
# they were computed before the step, `example_index` the examples'
# positions where the first epoch's cache reads or fills them, `anchors`
# an `Anchors`; each is `None` where absent.
Batch = collections.namedtuple(
    "Batch",
    ["x", "y", "sample_weight", "teacher_outputs", "example_index", "anchors"],
)

# A batch of anchor inputs, the teacher's outputs on them where `fit`
# computed them once (else `None`), and the mode of their term (one of
# `ANCHOR_MODES`).
Anchors = collections.namedtuple(
    "Anchors", ["inputs", "teacher_outputs", "mode"]
)


def pack(x, *, teacher_outputs=None, example_index=None):
    """Inputs `x` packed with the teacher's outputs on them or with the
    examples' positions, for `fit`'s arrays."""
    packed = {_INPUTS: x}
    if teacher_outputs is not None:
        packed[_TEACHER_OUTPUTS] = teacher_outputs
    if example_index is not None:
        packed[_EXAMPLE_INDEX] = example_index
    return packed


def with_anchors(mode, data, anchors):
    """A batch `data` (a tuple, or inputs alone) with `anchors` packed
    into its inputs: a dict with `"inputs"` and, where cached,
    `"teacher_outputs"`."""
    x = data[0] if isinstance(data, tuple) else data
    packed = dict(x) if _packed(x) else pack(x)
    packed[_ANCHORS[mode]] = anchors
    if isinstance(data, tuple):
        return (packed, *data[1:])
    return packed


def unpack(data):
    """The `Batch` of a step's `data`: a Keras batch, a 4-tuple of
    `cache_teacher_outputs`, or either with packed inputs."""
    if isinstance(data, tuple) and len(data) == 4:
        x, y, sample_weight, teacher_outputs = data
    else:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_outputs = None
    if not _packed(x):
        return Batch(x, y, sample_weight, teacher_outputs, None, None)
    anchors = None
    for mode, key in _ANCHORS.items():
        if key in x:
            anchors = Anchors(
                x[key]["inputs"], x[key].get("teacher_outputs"), mode
            )
    return Batch(
        x[_INPUTS],
        y,
        sample_weight,
        x.get(_TEACHER_OUTPUTS, teacher_outputs),
        x.get(_EXAMPLE_INDEX),
        anchors,
    )


def keras_batch(data):
    """Keras's `(x, y, sample_weight)` of a step's `data`, without what was
    packed beside the inputs."""
    return tuple(unpack(data)[:3])


def _packed(x):
    """Whether the inputs `x` were packed by `pack` or `with_anchors`."""
    return isinstance(x, dict) and _INPUTS in x
