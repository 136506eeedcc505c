"""TeacherStudentModel: a `keras.Model` that behaves as the student it trains.

`SFTModel` wraps the user's model with a frozen teacher. Everywhere a user
touches a `keras.Model` (building, `trainable`, `export`, `evaluate`,
`predict` and `*_on_batch` on a keras-hub task's raw inputs, loading a
compiled model, distributed training), the wrapper must act as its student
would alone, and the teacher must stay the frozen reference. This base
class holds that plumbing, so that `SFTModel` holds the method: its
arguments, its step and its config.
"""

import keras

from keras_sft import _batch
from keras_sft import _keras_compat
from keras_sft import _shared_teacher
from keras_sft import _task_preprocessing


class TeacherStudentModel(_keras_compat.OneReplicaSymbolicBuild):
    """A `keras.Model` holding a trained `student` and a frozen `teacher`.

    Subclasses set `self.student` and `self.teacher` (shared with the
    student by `_shared_teacher` or given by the user) in their
    constructor, and define the steps. The model is then built when its
    student is, calls and exports the student, keeps the teacher frozen
    whatever `trainable` is set to, gives the teacher its own copies of
    shared weights before they train, applies a keras-hub task's
    preprocessor in `evaluate`, `predict` and the `*_on_batch` methods as
    the task does, and builds Keras's compiled loss from one replica's
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
        # The wrapper has no weights of its own, so it is built when its
        # student is: at construction, or for a subclassed student on the
        # first batch, which the steps pass to the student directly.
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
            self._unshare(_shared_teacher.unshare_trained)
            self.teacher.trainable = False

    def make_train_function(self, force=False):
        # Layers the user unfroze since the teacher was made would train
        # the weights the teacher shares: it gets its own copies first.
        self._unshare(_shared_teacher.unshare_trained)
        return super().make_train_function(force=force)

    def load_weights(self, filepath, *args, **kwargs):
        # Keras loads a LoRA layer's merged kernel into its base kernel.
        self._unshare(_shared_teacher.unshare_lora)
        return super().load_weights(filepath, *args, **kwargs)

    def _unshare(self, unshare):
        """Gives the teacher its own copies of the weights `unshare`
        (`_shared_teacher.unshare_trained` or `unshare_lora`) picks, and
        drops the functions traced with the shared ones."""
        if unshare(self.student, self.teacher, self.distribute_strategy):
            # Traced functions hold the variables they read.
            for traced in (self, self.teacher):
                traced.train_function = None
                traced.test_function = None
                traced.predict_function = None

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def export(self, filepath, **kwargs):
        """Exports the student alone, as `keras.Model.export` does; takes its
        arguments (see also `keras_sft.export_saved_model`)."""
        return self.student.export(filepath, **kwargs)

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
        batch = _task_preprocessing.batch(self.student, x, y, sample_weight)
        return super().train_on_batch(*batch, **kwargs)

    def test_on_batch(self, x, y=None, sample_weight=None, **kwargs):
        batch = _task_preprocessing.batch(self.student, x, y, sample_weight)
        return super().test_on_batch(*batch, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(
            _task_preprocessing.batch(self.student, x)[0]
        )
