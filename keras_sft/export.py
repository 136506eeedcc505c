"""Exporting the fine-tuned student as a TensorFlow SavedModel."""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_sft.sft_model import SFTModel


def export_saved_model(model, export_dir, *, overwrite=False):
    """Writes the student alone as a TensorFlow SavedModel.

    The SavedModel's `serving_default` signature maps a batch of inputs to
    the student's outputs (logits) computed with `training=False`. Only the
    student's variables are written: the teacher is needed for training, not
    for serving. It is written to a temporary directory beside `export_dir`
    and renamed into place, so `export_dir` appears complete or not at all:
    a failure midway leaves no partial SavedModel behind. With `overwrite`,
    an existing export is moved aside, the new one renamed into place, and
    the old one deleted: a crash leaves the previous export, or the new
    one, or (between the two renames) none at `export_dir`, never a mix.

    Example:

    ```python
    keras_sft.export_saved_model(model, "/tmp/student")
    serving = tf.saved_model.load("/tmp/student")
    logits = serving.signatures["serving_default"](images)["output_0"]
    ```

    Args:
        model: A `keras_sft.SFTModel` (its `student` is exported) or a
            built `keras.Model` with one symbolic input (Functional or
            Sequential).
        export_dir: String or path-like, a local directory; its parent
            must exist.
        overwrite: Bool, whether to replace an existing `export_dir`.
            Defaults to `False`: an existing `export_dir` is refused.
    """
    student = model.student if isinstance(model, SFTModel) else model
    if not isinstance(student, keras.Model):
        raise ValueError(
            "Invalid value for argument `model`. Expected a `keras.Model` "
            f"or a `keras_sft.SFTModel`. Received: model={model!r}"
        )
    input_signature = _input_signature(student)
    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(export_dir) and not overwrite:
        raise ValueError(
            "Invalid value for argument `export_dir`. Expected a path that "
            "does not exist yet (or pass `overwrite=True`). Received: "
            f"export_dir={export_dir!r}"
        )
    parent = os.path.dirname(export_dir)
    if not os.path.isdir(parent):
        raise ValueError(
            "Invalid value for argument `export_dir`. Expected a path whose "
            f"parent directory exists. Received: export_dir={export_dir!r}"
        )

    archive = keras.export.ExportArchive()
    archive.track(student)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda inputs: student(inputs, training=False),
        input_signature=input_signature,
    )
    # Same parent, so the final rename stays on one file system and is
    # atomic.
    staging_dir = tempfile.mkdtemp(
        prefix=f".{os.path.basename(export_dir)}.tmp-", dir=parent
    )
    try:
        archive.write_out(staging_dir, verbose=False)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    if os.path.exists(export_dir):
        previous_dir = f"{staging_dir}.previous"
        os.rename(export_dir, previous_dir)
        os.rename(staging_dir, export_dir)
        shutil.rmtree(previous_dir)
    else:
        os.rename(staging_dir, export_dir)


def _input_signature(student):
    """The `[tf.TensorSpec]` of the student's single symbolic input."""
    try:
        inputs = student.inputs
    except AttributeError:
        inputs = None
    if not inputs or len(inputs) != 1:
        raise ValueError(
            "Invalid value for argument `model`. Expected a built model with "
            "one symbolic input (Functional or Sequential). Received: "
            f"model={student!r} with inputs={inputs!r}"
        )
    (tensor,) = inputs
    return [tf.TensorSpec(tensor.shape, tensor.dtype, name="inputs")]
