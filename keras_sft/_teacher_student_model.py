"""TeacherStudentModel: a `keras.Model` that behaves as the student it trains.

`SFTModel` wraps the user's model with a frozen teacher. Everywhere a user
touches a `keras.Model` (building, `trainable`, `export`, `evaluate`,
`predict` and `*_on_batch` on a keras-hub task's raw inputs, loading a
compiled model, distributed training), the wrapper must act as its student
would alone, and the teacher must stay the frozen reference. This base
class holds that plumbing, so that `SFTModel` holds the method: its
arguments, its step and its config.
"""

import contextlib
import os

import keras

from keras_sft import _batch
from keras_sft import _keras_compat
from keras_sft import _model_files
from keras_sft import _shared_teacher
from keras_sft import _task_preprocessing


class TeacherStudentModel(_keras_compat.OneReplicaSymbolicBuild):
    """A `keras.Model` holding a trained `student` and a frozen `teacher`.

    Subclasses set `self.student` and `self.teacher` (shared with the
    student by `_shared_teacher` or given by the user) in their
    constructor, and define the steps. The model is then built when its
    student is, calls and exports the student, answers `layers`,
    `get_layer`, `inputs`, `outputs` and shapes as the student (Keras's
    saving walk alone sees its two models), keeps the teacher frozen
    whatever `trainable` is set to, gives the teacher its own copies of
    shared weights before they train, lists and writes weights as if the
    teacher held copies of all (as a loaded or cloned model does), saves
    files whole or not at all, applies a keras-hub task's preprocessor in
    `evaluate`, `predict` and the `*_on_batch` methods as the task does,
    and builds Keras's compiled loss from one replica's
    batch, without what `fit` packed beside the inputs, under any
    strategy.

    Example:

    ```python
    class Model(TeacherStudentModel):
        def __init__(self, student, **kwargs):
            super().__init__(**kwargs)
            self.student = student
            self.teacher = keras_sft.clone_teacher(student)
    ```

    Reference:
        - Keras, "Customizing what happens in `fit()`"
          (https://keras.io/guides/custom_train_step_in_tensorflow/).
    """

    def compile_from_config(self, config):
        _keras_compat.restore_compile(self, config)

    @property
    def built(self):
        # The wrapper has no weights of its own (but an `AdaptiveLambda`'s
        # value, made with it), so it is built when its student is: at
        # construction, or for a subclassed student on the first batch,
        # which the steps pass to the student directly.
        student = getattr(self, "student", None)
        return self._wrapper_built or (student is not None and student.built)

    @built.setter
    def built(self, value):
        self._wrapper_built = value

    @keras.Model.trainable.setter
    def trainable(self, value):
        keras.Model.trainable.fset(self, value)
        # Keras's setter reaches every sublayer, the teacher included; the
        # teacher stays the frozen reference whatever the wrapper is set to.
        if getattr(self, "teacher", None) is not None:
            self._unshare_trained()
            self.teacher.trainable = False

    def make_train_function(self, force=False):
        # Layers the user unfroze since the teacher was made would train
        # the weights the teacher shares: it gets its own copies first.
        # Only for a new function: the function traced before (`fit` again
        # without `compile`) trains what it trained.
        if force or self.train_function is None:
            self._unshare_trained()
        return super().make_train_function(force=force)

    # Keras lists a variable once per model, so a teacher sharing the
    # student's frozen weights would drop out of the wrapper's lists, and
    # a weights list would not fit a model whose teacher holds copies (one
    # loaded or cloned). The teacher's weights are listed whole, last.
    @property
    def weights(self):
        others, teacher_weights = self._weights_by_model()
        return others + teacher_weights

    @property
    def trainable_weights(self):
        # Each once, for optimizers: until `fit` unshares it, a weight the
        # user just unfroze is the teacher's too.
        if not self.trainable:
            return []
        return [w for w in super().weights if w.trainable]

    @property
    def non_trainable_weights(self):
        others, teacher_weights = self._weights_by_model()
        if not self.trainable:
            return others + teacher_weights
        return [w for w in others if not w.trainable] + teacher_weights

    def _weights_by_model(self):
        """Keras's list of the wrapper's weights without the teacher's
        own, and the teacher's weights (those it shares included)."""
        teacher = getattr(self, "teacher", None)
        if teacher is None:
            return super().weights, []
        teacher_weights = teacher.weights
        owned = {id(w) for w in teacher_weights}
        owned -= {id(w) for w in self.student.weights}
        others = [w for w in super().weights if id(w) not in owned]
        return others, teacher_weights

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Saves the model as `keras.Model.save` does, whole or not at all.

        A `.keras` file is written beside `filepath`, then renamed
        over it: a fault leaves the previous file (or none), never half a
        file, and a full disk raises one `OSError` naming the file and the
        space free. Takes the arguments of `keras.Model.save`.
        """
        suffix = _save_suffix(filepath, zipped)
        if suffix in (".h5", ".hdf5"):
            # Keras's legacy format names weights by layer, and the teacher's
            # layers bear the student's names: h5py refuses the second.
            raise ValueError(
                "Invalid value for argument `filepath`. Expected a `.keras` "
                "file: the legacy HDF5 format cannot hold a student and its "
                "teacher, whose layers share names (the student alone: "
                "`model.student.save(filepath)`). Received: "
                f"filepath={os.fspath(filepath)!r}"
            )
        if suffix is None or (not overwrite and os.path.exists(filepath)):
            # A directory, a URL or a file object; or Keras's question
            # before overwriting, which `overwrite=False` asks.
            return super().save(
                filepath, overwrite=overwrite, zipped=zipped, **kwargs
            )
        save = super().save
        _model_files.write(
            filepath,
            lambda staging: save(staging, zipped=zipped, **kwargs),
            suffix=suffix,
            variables=_model_files.model_variables(self),
        )

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """Saves the weights as `keras.Model.save_weights` does, a single
        `.weights.h5` file whole or not at all (see `save`), made in memory
        first where memory allows, so that a disk filling up midway is one
        `OSError`, not HDF5 crashing."""
        if (
            max_shard_size is not None
            or not _model_files.is_local(filepath)
            or not os.fspath(filepath).endswith(".weights.h5")
            or (not overwrite and os.path.exists(filepath))
        ):
            return super().save_weights(
                filepath, overwrite=overwrite, max_shard_size=max_shard_size
            )
        _model_files.write_weights(filepath, self, super().save_weights)

    def set_weights(self, weights):
        with self._weights_written():
            super().set_weights(weights)

    def load_weights(self, filepath, *args, **kwargs):
        try:
            with self._weights_written():
                return super().load_weights(filepath, *args, **kwargs)
        except Exception as error:
            # Keras's own messages name neither the file nor the fix.
            damage = _model_files.damage(filepath)
            if damage is None:
                raise
            raise ValueError(
                "Invalid value for argument `filepath`. Expected a whole "
                "`.weights.h5` or `.keras` file (write it again with "
                "`save_weights` or `save`, or load another one). Received: "
                f"filepath={os.fspath(filepath)!r}, {damage}"
            ) from error

    @contextlib.contextmanager
    def _weights_written(self):
        """Gives the teacher its own copies of the weights it shares while
        weights are written, so that each model's entries reach its own
        variables, then shares again those left equal."""
        # A Keras LoRA layer also loads its merged kernel into its base
        # kernel, which the teacher may share.
        unshared = _shared_teacher.unshare_all(
            self.student, self.teacher, self.distribute_strategy
        )
        try:
            yield
        finally:
            if _shared_teacher.reshare(
                self.student,
                self.teacher,
                unshared,
                trained=self._unshareable_weights(),
                on_unshare=self._forget_traced,
            ):
                self._forget_traced()

    def _unshare_trained(self):
        """Gives the teacher its own copies of the weights it shares that
        the student now trains."""
        if _shared_teacher.unshare_trained(
            self.student,
            self.teacher,
            self.distribute_strategy,
            trained=self._unshareable_weights(),
        ):
            self._teacher_took_copies()
            self._forget_traced()

    def _teacher_took_copies(self):
        """Called when the teacher got its own copies of weights it shared
        with the student, while they hold the pretrained values, before
        the functions traced with the shared ones are dropped; subclasses
        may convert the copies."""

    def _reshare_restored(self):
        """Shares again the weights that restoring a `tf.train.Checkpoint`
        gave the teacher its own copies of, where they hold the student's
        value; call it before a training step is traced."""
        if _shared_teacher.reshare_restored(
            self.student,
            self.teacher,
            trained=self._unshareable_weights(),
            on_unshare=self._forget_traced,
        ):
            self._forget_traced()

    def _unshareable_weights(self):
        """The student's weights that the teacher must not share: those
        the step trains (what the optimizer was built for, while `fit` is
        not compiled again), and those it would train after `compile`."""
        return self.student.trainable_weights + _keras_compat.trained_weights(
            self.student, getattr(self, "optimizer", None)
        )

    def _forget_traced(self):
        """Drops the functions traced with the teacher's former variables;
        makes again the train function `fit` may be running with (a
        callback restoring weights in `on_train_begin`)."""
        training = self.train_function is not None
        # Traced functions hold the variables they read.
        for traced in (self, self.teacher):
            traced.train_function = None
            traced.test_function = None
            traced.predict_function = None
        if training:
            self.make_train_function()

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    # What a Functional or Sequential model answers about its layers and
    # graph is the student's: `for layer in model.layers[:-2]: ...`,
    # `model.get_layer("backbone").trainable = True`, feature extractors
    # (`keras.Model(model.inputs, model.get_layer(n).output)`) and shapes.
    # A subclassed student has no `inputs`, and the wrapper then has none
    # either.
    @property
    def layers(self):
        # Keras lays out the files of a subclassed model by its `layers`,
        # and every file saved so far holds the wrapper's two models there:
        # Keras's saving walk alone still sees them.
        if _keras_compat.in_saving_walk():
            return super().layers
        return self.student.layers

    def get_layer(self, name=None, index=None):
        return self.student.get_layer(name=name, index=index)

    @property
    def inputs(self):
        return self.student.inputs

    @property
    def outputs(self):
        return self.student.outputs

    @property
    def input(self):
        return self.student.input

    @property
    def output(self):
        return self.student.output

    @property
    def input_shape(self):
        return self.student.input_shape

    @property
    def output_shape(self):
        return self.student.output_shape

    def compute_output_shape(self, *args, **kwargs):
        return self.student.compute_output_shape(*args, **kwargs)

    def export(self, filepath, **kwargs):
        """Exports the student alone, as `keras.Model.export` does; takes its
        arguments (see also `keras_sft.export_saved_model`)."""
        return self.student.export(filepath, **kwargs)

    def predict_step(self, data):
        # The student's own step, which may post-process its outputs (a
        # keras-hub object detector's decodes its boxes).
        return self.student.predict_step(data)

    def _symbolic_build_batch(self, batch):
        # Keras builds from 3-tuples: without cached outputs or anchors.
        return _batch.keras_batch(batch)

    def evaluate(self, *args, **kwargs):
        arguments = _task_preprocessing.inference_arguments(
            self.student, keras.Model.evaluate, self, args, kwargs
        )
        return super().evaluate(**arguments)

    def predict(self, *args, **kwargs):
        return super().predict(
            **_task_preprocessing.inference_arguments(
                self.student, keras.Model.predict, self, args, kwargs
            )
        )

    def train_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        self._reshare_restored()
        batch = _task_preprocessing.batch(self.student, x, y, sample_weight)
        return super().train_on_batch(*batch, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        batch = _task_preprocessing.batch(self.student, x, y, sample_weight)
        return super().test_on_batch(*batch, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(
            _task_preprocessing.batch(self.student, x)[0]
        )


def _save_suffix(filepath, zipped):
    """The end of the name of a temporary file that `keras.Model.save`
    writes as it would write `filepath`, or `None` where it does not write
    one local file."""
    if not _model_files.is_local(filepath) or zipped is False:
        return None
    for suffix in (".keras", ".h5", ".hdf5"):
        if os.fspath(filepath).endswith(suffix):
            return suffix
    return None
