"""SFTModel: fine-tuning with a frozen-teacher consistency term."""

import math
import numbers

import keras
import tensorflow as tf
from keras import ops

from keras_sft import distances
from keras_sft.teacher import clone_teacher


def _num_replicas():
    """Number of replicas of the strategy in scope (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _in_multi_worker_mode(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` over >1 worker."""
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _first_replica_batch(strategy, batch):
    """This worker's first replica's part of a (distributed) batch."""
    return keras.tree.map_structure(
        lambda value: (
            strategy.experimental_local_results(value)[0]
            if isinstance(value, tf.distribute.DistributedValues)
            else value
        ),
        batch,
    )


def _unpack(data):
    """`(x, y, sample_weight, teacher_outputs)` of a batch, `None` if absent."""
    # `cache_teacher_outputs` yields 4-tuples; Keras's own batches have at
    # most three parts, so the two cannot be confused.
    if isinstance(data, tuple) and len(data) == 4:
        return data
    return (*keras.utils.unpack_x_y_sample_weight(data), None)


def _batch_size(x):
    """Leading dimension of the first input tensor, as float32."""
    first = next(t for t in keras.tree.flatten(x) if t is not None)
    return ops.cast(ops.shape(first)[0], "float32")


@keras.saving.register_keras_serializable(package="keras_sft")
class SFTModel(keras.Model):
    """Fine-tunes a pretrained model while keeping its outputs near a teacher.

    Supervised fine-tuning (SFT) minimises

        L = L_task(y, student(x)) + lambda_ * D(teacher(x), student(x))

    where `teacher` is a frozen copy of the pretrained model taken before
    fine-tuning and `student` starts from the same weights and is trained.
    The consistency term `D` limits how far the fine-tuned outputs drift from
    what the pretrained model computed, and so limits forgetting. Unlike
    the textbook snippet that calls one model twice (a penalty that is
    always zero), the teacher here is a separate, frozen set of weights.

    `train_step` runs the teacher with `training=False` outside the gradient
    tape and the student with `training=True` inside it. Both terms are
    reduced like Keras losses ("sum_over_batch_size", honouring
    `sample_weight`) and divided by the number of replicas, so under any
    `tf.distribute` strategy the summed gradient is the one-device gradient
    of the global batch. The student's regularization losses are added. The
    total goes through `optimizer.scale_loss`, so a `LossScaleOptimizer`
    (which `compile` sets up under `mixed_float16`) gets correctly scaled
    gradients. Distances are computed in float32.

    Logs `loss` (the total), `task_loss`, `distill_loss` (before
    multiplication by `lambda_`), then the compiled metrics of the student's
    outputs. `predict` and `call` return the student's outputs.

    Example:

    ```python
    pretrained = keras.models.load_model("pretrained.keras")
    model = keras_sft.SFTModel(pretrained, lambda_=0.5)
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(new_task_dataset, epochs=5)
    keras_sft.export_saved_model(model, "/tmp/student")
    ```

    Args:
        student: `keras.Model`, the pretrained model to fine-tune. It is
            trained in place: `model.student is student`.
        teacher: `keras.Model` or `None`. The frozen reference; it is set to
            `trainable=False`. `None` takes a frozen clone of `student`
            (`keras_sft.clone_teacher`) now, before any training. Its
            outputs must have the student's shape. Defaults to `None`.
        lambda_: Float >= 0, weight of the consistency term. `0` is plain
            fine-tuning. Defaults to `0.5`.
        distance: String, the consistency distance `D`: `"mse"` (mean over
            output units of the squared difference, as
            `keras.losses.MeanSquaredError`), `"squared_l2"` (sum over output
            units, the written `||f(x) - f'(x)||^2`) or `"kl"`
            (`T^2 * KL(softmax(t/T) || softmax(s/T))`, as in Learning without
            Forgetting). Defaults to `"mse"`.
        temperature: Float > 0, the temperature `T` of `"kl"`. Defaults to
            `1.0`.
        **kwargs: Passed to `keras.Model` (for example `name`). The dtype
            policy defaults to the student's.

    Reference:
        - Li & Hoiem, "Learning without Forgetting", TPAMI 2017
          (https://arxiv.org/abs/1606.09282).
        - Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
          Network", 2015 (https://arxiv.org/abs/1503.02531).
    """

    def __init__(
        self,
        student,
        teacher=None,
        lambda_=0.5,
        distance="mse",
        temperature=1.0,
        **kwargs,
    ):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "SFTModel needs the TensorFlow backend (it trains under "
                "`tf.distribute`). Set KERAS_BACKEND=tensorflow. Received: "
                f"backend={keras.backend.backend()!r}"
            )
        if not isinstance(student, keras.Model):
            raise ValueError(
                "Invalid value for argument `student`. Expected a "
                f"`keras.Model` instance. Received: student={student!r}"
            )
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(
                "Invalid value for argument `teacher`. Expected a "
                "`keras.Model` instance or None. Received: "
                f"teacher={teacher!r}"
            )
        if (
            isinstance(lambda_, bool)
            or not isinstance(lambda_, numbers.Real)
            or not math.isfinite(lambda_)
            or lambda_ < 0
        ):
            raise ValueError(
                "Invalid value for argument `lambda_`. Expected a float >= 0. "
                f"Received: lambda_={lambda_!r}"
            )
        if distance not in distances.DISTANCES:
            raise ValueError(
                "Invalid value for argument `distance`. Expected one of "
                f"{tuple(distances.DISTANCES)}. Received: distance={distance!r}"
            )
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise ValueError(
                "Invalid value for argument `temperature`. Expected a float "
                f"> 0. Received: temperature={temperature!r}"
            )
        if teacher is not None:
            _check_output_shapes(teacher, student)
        kwargs.setdefault("dtype", student.dtype_policy)
        super().__init__(**kwargs)

        self.student = student
        self.teacher = clone_teacher(student) if teacher is None else teacher
        self.teacher.trainable = False
        self.lambda_ = float(lambda_)
        self.distance = distance
        self.temperature = float(temperature)

        self._distance_loss = distances.DistanceLoss(
            distance, temperature=self.temperature
        )
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        if student.built:
            self.built = True

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures the model for training.

        Args:
            optimizer: As in `keras.Model.compile`. Defaults to `"rmsprop"`.
            loss: The task loss `L_task` on the student's outputs, as in
                `keras.Model.compile`. `None` means
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
                Defaults to `None`.
            metrics: Metrics of the student's outputs against `y`. Defaults to
                `None`.
            **kwargs: Passed to `keras.Model.compile` (for example
                `jit_compile`, `steps_per_execution`).
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs
        )

    def compile_from_config(self, config):
        # Keras skips `compile` on load for models that override it; ours
        # keeps Keras's signature, so restore the saved compile arguments.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        # Keras lists its loss tracker, then the compiled metrics, then ours;
        # put the two loss terms right after `loss` so logs read in order.
        terms = [self.task_loss_tracker, self.distill_loss_tracker]
        others = [m for m in super().metrics if m not in terms]
        return others[:1] + terms + others[1:]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _compute_terms(self, y, y_pred, teacher_pred, sample_weight):
        """Returns `(total, task_loss, distill_loss)`, scaled per replica.

        Each term is a per-replica mean divided by the number of replicas, as
        Keras's losses are, so that summing gradients over replicas gives the
        gradient of the global-batch mean rather than N times it.
        """
        task_loss = self._compile_loss(y, y_pred, sample_weight)
        distill_loss = self._distance_loss(
            teacher_pred, y_pred, sample_weight=sample_weight
        )
        total = task_loss + self.lambda_ * distill_loss
        # Only the student's regularization losses: the teacher's are constant
        # and would inflate the logged loss.
        for regularization in self.student.losses:
            total += ops.cast(ops.sum(regularization), "float32") / (
                _num_replicas()
            )
        return total, task_loss, distill_loss

    def _track(self, x, total, task_loss, distill_loss):
        """Updates the loss trackers with the unscaled per-replica means."""
        # Undo the per-replica scaling and weight by the local batch size:
        # the trackers sum over replicas on read, giving the global mean.
        batch_size = _batch_size(x)
        replicas = _num_replicas()
        self._loss_tracker.update_state(total * replicas, batch_size)
        self.task_loss_tracker.update_state(task_loss * replicas, batch_size)
        self.distill_loss_tracker.update_state(
            distill_loss * replicas, batch_size
        )

    def train_step(self, data):
        x, y, sample_weight, teacher_pred = _unpack(data)
        if teacher_pred is None:
            teacher_pred = self.teacher(x, training=False)
        teacher_pred = ops.stop_gradient(teacher_pred)
        with tf.GradientTape() as tape:
            y_pred = self.student(x, training=True)
            total, task_loss, distill_loss = self._compute_terms(
                y, y_pred, teacher_pred, sample_weight
            )
            scaled_total = self.optimizer.scale_loss(total)
        trainable_weights = self.student.trainable_weights
        gradients = tape.gradient(scaled_total, trainable_weights)
        self.optimizer.apply_gradients(
            zip(gradients, trainable_weights, strict=True)
        )
        self._track(x, total, task_loss, distill_loss)
        return self._step_logs(
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        )

    def test_step(self, data):
        x, y, sample_weight, teacher_pred = _unpack(data)
        if teacher_pred is None:
            teacher_pred = self.teacher(x, training=False)
        y_pred = self.student(x, training=False)
        total, task_loss, distill_loss = self._compute_terms(
            y, y_pred, teacher_pred, sample_weight
        )
        self._track(x, total, task_loss, distill_loss)
        return self._step_logs(
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        )

    def _step_logs(self, logs):
        """The step's logs, shaped for Keras's reduction under `fit`."""
        # Under multiple workers Keras reduces each returned log with
        # `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
        # (keras-team/keras#20585); a leading axis of one reduces to the
        # same scalar mean.
        if _in_multi_worker_mode(self.distribute_strategy):
            return {
                key: ops.expand_dims(value, 0) for key, value in logs.items()
            }
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras takes the first batch's shapes to build the compiled loss and
        # metrics, but first averages the batch over replicas with
        # `strategy.reduce`, which `MultiWorkerMirroredStrategy` cannot do on
        # per-replica data. One replica's batch has the same shapes. Keras
        # builds from 3-tuples: leave out cached teacher outputs.
        if self._distribute_strategy is None:
            return
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = _first_replica_batch(
                    self.distribute_strategy, next(batches)
                )
                break
        if data_batch is not None:
            data_batch = _unpack(data_batch)[:3]
        super()._maybe_symbolic_build(data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "lambda_": self.lambda_,
                "distance": self.distance,
                "temperature": self.temperature,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        return cls(**config)


def _check_output_shapes(teacher, student):
    """Raises `ValueError` if built teacher and student outputs differ."""
    try:
        teacher_outputs = teacher.outputs
        student_outputs = student.outputs
    except AttributeError:
        # Subclassed models have no symbolic outputs: the distance checks
        # the shapes on the first batch instead.
        return
    if teacher_outputs is None or student_outputs is None:
        return
    teacher_shapes = [
        tuple(t.shape) for t in keras.tree.flatten(teacher_outputs)
    ]
    student_shapes = [
        tuple(s.shape) for s in keras.tree.flatten(student_outputs)
    ]
    if teacher_shapes != student_shapes:
        raise ValueError(
            "Invalid value for argument `teacher`. Expected a model whose "
            "outputs have the student's shapes. Received: teacher output "
            f"shapes {teacher_shapes}, student output shapes {student_shapes}"
        )
