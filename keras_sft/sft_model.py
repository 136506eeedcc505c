"""SFTModel: fine-tuning with a frozen-teacher consistency term."""

import inspect
import math
import numbers

import keras
import tensorflow as tf
from keras import ops

from keras_sft import distances
from keras_sft import outputs
from keras_sft import teacher_cache
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


# Keys under which `SFTModel.fit` packs inputs and cached teacher outputs
# into `x` for array inputs, so that Keras's array handling (shuffling,
# `validation_split`, batching, distribution) carries the outputs along.
# Into `x`, not `y`: Keras matches `sample_weight` to the structure of `y`.
_INPUTS = "_keras_sft_inputs"
_TEACHER_OUTPUTS = "_keras_sft_teacher_outputs"
# `SFTModel.fit` takes `keras.Model.fit`'s arguments by position or name.
_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def _unpack(data):
    """`(x, y, sample_weight, teacher_outputs)` of a batch, `None` if absent."""
    # `cache_teacher_outputs` yields 4-tuples; Keras's own batches have at
    # most three parts, so the two cannot be confused.
    if isinstance(data, tuple) and len(data) == 4:
        return data
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, dict) and _TEACHER_OUTPUTS in x:
        return x[_INPUTS], y, sample_weight, x[_TEACHER_OUTPUTS]
    return x, y, sample_weight, None


def _same_length_arrays(*parts):
    """Whether `parts` are NumPy arrays or tensors (or structures of them)
    with one number of examples: data that `fit` reads as arrays, the same
    every epoch."""
    lengths = teacher_cache.array_lengths(parts)
    return (
        all(part is not None for part in parts)
        and bool(lengths)
        and len(set(lengths)) == 1
    )


def _batch_size(x):
    """Leading dimension of the first input tensor, as float32."""
    first = next(t for t in keras.tree.flatten(x) if t is not None)
    return ops.cast(ops.shape(first)[0], "float32")


def _accumulate(tracker, mean, count):
    """Adds the scalar `mean` of `count` samples to a `keras.metrics.Mean`."""
    # The sums `Mean.update_state(mean, sample_weight=count)` makes, without
    # its broadcasting and reductions: 16 graph ops fewer per tracker,
    # which counts when a step of a small model takes a few milliseconds.
    tracker.total.assign_add(ops.cast(mean, tracker.dtype) * count)
    tracker.count.assign_add(count)


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

    Outputs of any rank work. For per-pixel logits `(batch, H, W, classes)`
    with labels `(batch, H, W)`, both terms are per-pixel values averaged
    over every non-batch axis, as Keras reduces per-pixel losses; a
    `sample_weight` of shape `(batch,)` weighs every pixel of its sample
    and one of shape `(batch, H, W)` weighs each pixel.

    Students with several outputs (a list or a dict, as Keras's functional
    API gives) take `compile`'s usual `loss=` structure: one loss for all,
    a list, or a dict by output name. Teacher outputs pair with the student
    outputs of the same name (dict key, or output layer name for lists), so
    the teacher may have only some of the student's outputs, for example
    the old head when the student has grown a new one.

    Logs `loss` (the total), `task_loss`, `distill_loss` (the weighted sum
    over distilled outputs and features, before multiplication by
    `lambda_`), then for a student with several outputs `<output>_task_loss`
    and `<output>_distill_loss` per output (unweighted), `<layer>_distill_loss`
    per distilled feature, then the compiled metrics of the student's
    outputs. `predict` and `call` return the
    student's outputs.

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
            (`keras_sft.clone_teacher`) now, before any training. Each of
            its outputs must have the shape of the student output of the
            same name. Defaults to `None`.
        lambda_: Float >= 0, weight of the consistency term (`0` is plain
            fine-tuning), or a schedule of the optimizer's step: a
            `keras.optimizers.schedules.LearningRateSchedule` (saved with
            the model) or a callable returning a value >= 0; its current
            value is then logged as `lambda`. Defaults to `0.5`.
        distance: String, the consistency distance `D`: `"mse"` (mean over
            output units of the squared difference, as
            `keras.losses.MeanSquaredError`), `"squared_l2"` (sum over output
            units, the written `||f(x) - f'(x)||^2`) or `"kl"`
            (`T^2 * KL(softmax(t/T) || softmax(s/T))`, as in Learning without
            Forgetting). Defaults to `"mse"`.
        temperature: Float > 0, the temperature `T` of `"kl"`. Defaults to
            `1.0`.
        distill_outputs: List of output names or `None`, the outputs kept
            close to the teacher's. `None` means every teacher output; `[]`
            none (with `distill_features`: features instead of outputs).
            Defaults to `None`.
        distill_weights: Dict from output or feature name to float >= 0,
            or `None`; the weight of each distance in `distill_loss`
            (missing names weigh 1). Defaults to `None`.
        distill_features: List of layer names or `None`. The outputs of
            these layers (for example the penultimate features) are kept
            close to the same layers' outputs in the teacher, with
            `distance` (`"mse"` or `"squared_l2"`), each logged as
            `<layer>_distill_loss`. Needs Functional or Sequential models.
            Defaults to `None`.
        cache_teacher: Bool. When `fit` is given arrays (`x` and `y` as
            NumPy arrays or tensors, not a dataset), compute the teacher's
            outputs on them once, in one `teacher.predict` pass before the
            first epoch (and on array `validation_data`), instead of at
            every step: the teacher is frozen and runs with
            `training=False`, so the result is the live teacher's (within
            float rounding) and each epoch runs the student alone. It keeps
            one output per example in memory, so it is not done where
            the outputs would take more memory than `x` (per-pixel logits
            of many classes), nor for a single epoch (the pass would cost
            what it saves), with `distill_features`, `lambda_=0` or
            several workers, or for datasets (see
            `keras_sft.cache_teacher_outputs`). Defaults to `True`.
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
        *,
        distill_outputs=None,
        distill_weights=None,
        distill_features=None,
        cache_teacher=True,
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
        _check_lambda(lambda_)
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
        if not isinstance(cache_teacher, bool):
            raise ValueError(
                "Invalid value for argument `cache_teacher`. Expected a bool. "
                f"Received: cache_teacher={cache_teacher!r}"
            )
        outputs.check_distill_outputs(distill_outputs)
        outputs.check_distill_weights(distill_weights)
        _check_distill_features(distill_features, distance, distill_outputs)
        student_names = outputs.output_names(student)
        teacher_names = (
            student_names if teacher is None else outputs.output_names(teacher)
        )
        distilled = outputs.distilled_names(
            student_names, teacher_names, distill_outputs
        )
        if distill_weights is not None and distilled is not None:
            known = [*distilled, *(distill_features or [])]
            unknown = sorted(set(distill_weights) - set(known))
            if unknown:
                raise ValueError(
                    "Invalid value for argument `distill_weights`. Expected "
                    f"keys among the distilled outputs and features {known}. "
                    f"Received: distill_weights={distill_weights!r}"
                )
        if teacher is not None and distilled is not None:
            outputs.check_output_shapes(teacher, student, distilled)
        kwargs.setdefault("dtype", student.dtype_policy)
        super().__init__(**kwargs)

        self.student = student
        self.teacher = clone_teacher(student) if teacher is None else teacher
        self.teacher.trainable = False
        self.lambda_ = (
            float(lambda_) if isinstance(lambda_, numbers.Real) else lambda_
        )
        self.distance = distance
        self.temperature = float(temperature)
        self.distill_outputs = (
            None if distill_outputs is None else list(distill_outputs)
        )
        self.distill_weights = (
            None
            if distill_weights is None
            else {name: float(w) for name, w in distill_weights.items()}
        )
        self.distill_features = (
            None if distill_features is None else list(distill_features)
        )
        self.cache_teacher = cache_teacher
        if student_names is not None:
            # `compile` maps dict losses and metrics of list outputs by name.
            self.output_names = student_names
        self._student_extractor = _feature_extractor(
            student, self.distill_features, "student"
        )
        self._teacher_extractor = _feature_extractor(
            self.teacher, self.distill_features, "teacher"
        )
        if self._student_extractor is not None:
            _check_feature_shapes(
                self._teacher_extractor, self._student_extractor
            )

        self._student_names = student_names
        self._teacher_names = teacher_names
        self._distance_loss = distances.DistanceLoss(
            distance, temperature=self.temperature
        )
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        # Per-output logs need the output names before training, so that the
        # trackers are created with the model (inside a strategy's scope).
        multi_output = student_names is not None and len(student_names) > 1
        self.output_task_loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_task_loss")
            for name in (student_names if multi_output else [])
        }
        self.output_distill_loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_distill_loss")
            for name in (distilled if multi_output else [])
        }
        self.feature_distill_loss_trackers = {
            name: keras.metrics.Mean(name=f"{name}_distill_loss")
            for name in self.distill_features or []
        }
        self._task_loss = None
        self._task_loss_weights = None
        if student.built:
            self.built = True

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        **kwargs,
    ):
        """Configures the model for training.

        `jit_compile` and `steps_per_execution` keep Keras's defaults,
        chosen by measurement (benchmarks/README.md). `jit_compile="auto"`
        is off on CPU, where XLA made the small CNN's steps about three
        times slower. `steps_per_execution=1`: 16 steps per call made
        `SFTModel` on the 784-256-10 MLP 1.15x to 1.5x faster on two CPU
        cores (and the small CNN no faster), but per-batch callbacks then
        see the logs of every 16th batch only, so `keras_sft.TerminateOnNaN`
        would stop late and report every term as NaN, and Keras 3.15's
        multi-step loop fails under `MirroredStrategy`. Pass
        `steps_per_execution=16` for a small model on one device.

        Args:
            optimizer: As in `keras.Model.compile`. Defaults to `"rmsprop"`.
            loss: The task loss `L_task` on the student's outputs, as in
                `keras.Model.compile`: one loss for every output, a list in
                output order (for dict outputs, give a dict), or a dict
                keyed by output name (`None` values and missing keys give
                an output no task loss). `None` means
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
                for every output. Defaults to `None`.
            loss_weights: Float, list or dict, the weight of each output's
                task loss in `task_loss`, as in `keras.Model.compile`.
                Defaults to `None` (weight 1).
            metrics: Metrics of the student's outputs against `y`. Defaults to
                `None`.
            **kwargs: Passed to `keras.Model.compile` (for example
                `jit_compile`, `steps_per_execution`).
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if self._student_names is not None and len(self._student_names) > 1:
            outputs.output_losses(loss, loss_weights, self._student_names)
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            **kwargs,
        )
        self._task_loss = loss
        self._task_loss_weights = loss_weights

    def compile_from_config(self, config):
        # Keras skips `compile` on load for models that override it; ours
        # keeps Keras's signature, so restore the saved compile arguments.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        # Keras lists its loss tracker, then the compiled metrics, then ours;
        # put the loss terms right after `loss` so logs read in order. The
        # per-output losses of Keras's own `CompileLoss` are left out: ours
        # replace them (they weigh batches by their static size, which is
        # unknown for the last, partial batch).
        terms = [self.task_loss_tracker, self.distill_loss_tracker]
        if self._task_loss is not None and self.output_task_loss_trackers:
            with_loss = outputs.output_losses(
                self._task_loss, self._task_loss_weights, self._student_names
            )
            terms += [self.output_task_loss_trackers[n] for n in with_loss]
        terms += list(self.output_distill_loss_trackers.values())
        terms += list(self.feature_distill_loss_trackers.values())
        hidden = [
            *terms,
            *self.output_task_loss_trackers.values(),
            *(self._compile_loss.metrics if self._compile_loss else []),
        ]
        others = [m for m in super().metrics if not any(m is h for h in hidden)]
        return others[:1] + terms + others[1:]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _output_sample_weights(self, y_pred, sample_weight):
        """Sample weights per output, broadcast to each output's positions.

        Returns a tensor for a single output, else a dict by output name.
        """
        if not keras.tree.is_nested(y_pred):
            return outputs.expand_sample_weight(sample_weight, y_pred)
        predictions = outputs.by_name(y_pred, self._student_names)
        if sample_weight is None:
            return dict.fromkeys(predictions)
        if keras.tree.is_nested(sample_weight):
            weights = outputs.by_name(sample_weight, list(predictions))
        else:
            weights = dict.fromkeys(predictions, sample_weight)
        return {
            name: outputs.expand_sample_weight(weights.get(name), output)
            for name, output in predictions.items()
        }

    def _task_terms(self, y, y_pred, weights):
        """Returns the weighted task loss and `{tracker: unweighted loss}`."""
        if not keras.tree.is_nested(y_pred):
            return self._compile_loss(y, y_pred, weights), {}
        predictions = outputs.by_name(y_pred, self._student_names)
        labels = outputs.by_name(y, list(predictions))
        total = 0.0
        terms = {}
        losses = outputs.output_losses(
            self._task_loss, self._task_loss_weights, list(predictions)
        )
        for name, (loss, loss_weight) in losses.items():
            value = ops.cast(
                loss(labels[name], predictions[name], weights[name]), "float32"
            )
            total += value if loss_weight is None else loss_weight * value
            if name in self.output_task_loss_trackers:
                terms[self.output_task_loss_trackers[name]] = value
        return total, terms

    def _distill_terms(self, teacher_pred, y_pred, weights):
        """Returns the weighted distance and `{tracker: unweighted value}`."""
        if self.distill_outputs == []:
            return 0.0, {}
        if not keras.tree.is_nested(teacher_pred) and not keras.tree.is_nested(
            y_pred
        ):
            distance = self._distance_loss(
                teacher_pred, y_pred, sample_weight=weights
            )
            return distance, {}
        teacher = outputs.by_name(teacher_pred, self._teacher_names)
        student = outputs.by_name(y_pred, self._student_names)
        if not isinstance(weights, dict):
            weights = dict.fromkeys(student, weights)
        names = outputs.distilled_names(
            list(student), list(teacher), self.distill_outputs
        )
        total = 0.0
        terms = {}
        for name in names:
            value = self._distance_loss(
                teacher[name], student[name], sample_weight=weights[name]
            )
            total += (self.distill_weights or {}).get(name, 1.0) * value
            if name in self.output_distill_loss_trackers:
                terms[self.output_distill_loss_trackers[name]] = value
        return total, terms

    def _feature_terms(self, teacher_features, student_features, weights):
        """Returns the weighted feature distance and `{tracker: value}`."""
        total = 0.0
        terms = {}
        for name, tracker in self.feature_distill_loss_trackers.items():
            student = student_features[name]
            value = self._distance_loss(
                teacher_features[name],
                student,
                sample_weight=outputs.expand_sample_weight(weights, student),
            )
            total += (self.distill_weights or {}).get(name, 1.0) * value
            terms[tracker] = value
        return total, terms

    def _current_lambda(self):
        """`lambda_`, or its schedule's value at the optimizer's step."""
        if isinstance(self.lambda_, float):
            return self.lambda_
        return ops.cast(self.lambda_(self.optimizer.iterations), "float32")

    def _teacher_forward(self, x, cached=None):
        """Teacher outputs (`cached`, if given) and features, no gradient."""
        if self._teacher_extractor is None:
            if cached is None:
                cached = self.teacher(x, training=False)
            predictions, features = cached, {}
        elif cached is not None:
            raise ValueError(
                "Cached teacher outputs hold no intermediate features: with "
                "`distill_features`, train on the plain dataset (the "
                "teacher runs live)"
            )
        else:
            predictions, features = self._teacher_extractor(x, training=False)
        return keras.tree.map_structure(
            ops.stop_gradient, (predictions, features)
        )

    def _student_forward(self, x, training):
        """Student outputs and the features named by `distill_features`."""
        if self._student_extractor is None:
            return self.student(x, training=training), {}
        return self._student_extractor(x, training=training)

    def _compute_terms(
        self, y, y_pred, teacher_pred, sample_weight, features=({}, {})
    ):
        """Returns `(total, terms)`, each scaled per replica.

        `terms` maps each loss tracker (`task_loss`, `distill_loss`, then the
        per-output ones) to its value. Each value is a per-replica mean
        divided by the number of replicas, as Keras's losses are, so that
        summing gradients over replicas gives the gradient of the
        global-batch mean rather than N times it.
        """
        weights = self._output_sample_weights(y_pred, sample_weight)
        task_loss, task_terms = self._task_terms(y, y_pred, weights)
        distill_loss, distill_terms = self._distill_terms(
            teacher_pred, y_pred, weights
        )
        if self.distill_features:
            feature_loss, feature_terms = self._feature_terms(
                *features, sample_weight
            )
            distill_loss += feature_loss
            distill_terms.update(feature_terms)
        total = task_loss + self._current_lambda() * distill_loss
        # Only the student's regularization losses: the teacher's are constant
        # and would inflate the logged loss.
        for regularization in self.student.losses:
            total += ops.cast(ops.sum(regularization), "float32") / (
                _num_replicas()
            )
        terms = {
            self.task_loss_tracker: task_loss,
            self.distill_loss_tracker: distill_loss,
            **task_terms,
            **distill_terms,
        }
        return total, terms

    def _track(self, x, total, terms):
        """Updates the loss trackers with the unscaled per-replica means."""
        # Undo the per-replica scaling and weight by the local batch size:
        # the trackers sum over replicas on read, giving the global mean.
        batch_size = _batch_size(x)
        replicas = _num_replicas()
        for tracker, value in [(self._loss_tracker, total), *terms.items()]:
            if replicas > 1:
                value = value * replicas
            _accumulate(tracker, value, batch_size)

    def _structured_sample_weight(self, y_pred, sample_weight):
        """Sample weights broadcast per output, in the structure of `y_pred`."""
        if sample_weight is None:
            return None
        weights = self._output_sample_weights(y_pred, sample_weight)
        if isinstance(y_pred, (list, tuple)):
            return list(weights.values())
        return weights

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Keras builds its compiled loss through this hook with the raw
        # sample weights; broadcast them over dense outputs as our step does.
        return super().compute_loss(
            x,
            y,
            y_pred,
            self._structured_sample_weight(y_pred, sample_weight),
            training=training,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x, y, y_pred, self._structured_sample_weight(y_pred, sample_weight)
        )

    def fit(self, *args, **kwargs):
        """Trains the student; takes the arguments of `keras.Model.fit`.

        With `cache_teacher` (the default), arrays and two or more epochs,
        the teacher's outputs are computed once, before the first epoch,
        instead of at every step (see `cache_teacher`).

        Example:

        ```python
        model = keras_sft.SFTModel(pretrained, lambda_=0.5)
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=128, epochs=10, validation_split=0.1)
        ```
        """
        arguments = _FIT_SIGNATURE.bind(self, *args, **kwargs).arguments
        del arguments["self"]
        if self._caches_teacher(arguments):
            batch_size = arguments.get("batch_size")
            arguments["x"] = self._with_teacher_outputs(
                arguments["x"], batch_size
            )
            validation = arguments.get("validation_data")
            if (
                isinstance(validation, (tuple, list))
                and len(validation) in (2, 3)
                and _same_length_arrays(*validation[:2])
            ):
                inputs = self._with_teacher_outputs(
                    validation[0],
                    arguments.get("validation_batch_size") or batch_size,
                )
                arguments["validation_data"] = (inputs, *validation[1:])
        return super().fit(**arguments)

    fit.__signature__ = _FIT_SIGNATURE

    def _caches_teacher(self, arguments):
        """Whether `fit(**arguments)` trains on cached teacher outputs."""
        x, y = arguments.get("x"), arguments.get("y")
        epochs = arguments.get("epochs", 1) - arguments.get("initial_epoch", 0)
        return (
            self.cache_teacher
            # One epoch reads each example once: the pass would only add
            # `predict`'s overhead to the live teacher's work.
            and epochs >= 2
            # Unequal lengths too are left to Keras, whose error names `x`
            # and `y`.
            and _same_length_arrays(x, y)
            and self._teacher_extractor is None
            and self.lambda_ != 0.0
            and not _in_multi_worker_mode(self.distribute_strategy)
            and self._outputs_fit_beside(x)
        )

    def _outputs_fit_beside(self, x):
        """Whether the teacher's outputs on `x` take no more memory than `x`.

        Classifier outputs are a small fraction of their inputs; dense
        outputs with many classes (per-pixel logits) can be several times
        larger, and there the live teacher, which needs no memory per
        example, is the safer default.
        """
        leaves = keras.tree.flatten(x)
        try:
            spec = self.teacher.compute_output_spec(
                keras.tree.map_structure(
                    lambda a: keras.KerasTensor(
                        (None, *a.shape[1:]), dtype=tf.as_dtype(a.dtype).name
                    ),
                    x,
                )
            )
        except Exception:  # noqa: BLE001 - any failure: keep the live teacher
            return False
        per_example = sum(
            math.prod(s.shape[1:]) * tf.as_dtype(s.dtype).size
            for s in keras.tree.flatten(spec)
        )
        return per_example * int(leaves[0].shape[0]) <= sum(
            math.prod(leaf.shape) * tf.as_dtype(leaf.dtype).size
            for leaf in leaves
        )

    def _with_teacher_outputs(self, x, batch_size):
        """Inputs `x` packed with the teacher's outputs on them."""
        teacher_outputs = self.teacher.predict(
            x, batch_size=batch_size or 32, verbose=0
        )
        return {_INPUTS: x, _TEACHER_OUTPUTS: teacher_outputs}

    def train_step(self, data):
        x, y, sample_weight, cached = _unpack(data)
        teacher_pred, teacher_features = self._teacher_forward(x, cached)
        with tf.GradientTape() as tape:
            y_pred, student_features = self._student_forward(x, training=True)
            total, terms = self._compute_terms(
                y,
                y_pred,
                teacher_pred,
                sample_weight,
                (teacher_features, student_features),
            )
            scaled_total = self.optimizer.scale_loss(total)
        trainable_weights = self.student.trainable_weights
        gradients = tape.gradient(scaled_total, trainable_weights)
        self.optimizer.apply_gradients(
            zip(gradients, trainable_weights, strict=True)
        )
        self._track(x, total, terms)
        return self._step_logs(
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        )

    def test_step(self, data):
        x, y, sample_weight, cached = _unpack(data)
        teacher_pred, teacher_features = self._teacher_forward(x, cached)
        y_pred, student_features = self._student_forward(x, training=False)
        total, terms = self._compute_terms(
            y,
            y_pred,
            teacher_pred,
            sample_weight,
            (teacher_features, student_features),
        )
        self._track(x, total, terms)
        return self._step_logs(
            self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        )

    def _step_logs(self, logs):
        """The step's logs (with a scheduled `lambda_`'s current value),
        shaped for Keras's reduction under `fit`."""
        # Under multiple workers Keras reduces each returned log with
        # `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
        # (keras-team/keras#20585); a leading axis of one reduces to the
        # same scalar mean.
        if not isinstance(self.lambda_, float):
            logs = {**logs, "lambda": self._current_lambda()}
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
                "lambda_": (
                    self.lambda_
                    if isinstance(self.lambda_, float)
                    else keras.saving.serialize_keras_object(self.lambda_)
                ),
                "distance": self.distance,
                "temperature": self.temperature,
                "distill_outputs": self.distill_outputs,
                "distill_weights": self.distill_weights,
                "distill_features": self.distill_features,
                "cache_teacher": self.cache_teacher,
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
        if isinstance(config["lambda_"], dict):
            config["lambda_"] = keras.saving.deserialize_keras_object(
                config["lambda_"]
            )
        return cls(**config)


def _check_lambda(lambda_):
    """Raises `ValueError` unless `lambda_` is a float >= 0 or a schedule."""
    if isinstance(lambda_, bool):
        valid = False
    elif isinstance(lambda_, numbers.Real):
        if not math.isfinite(lambda_) or lambda_ < 0:
            raise ValueError(
                "Invalid value for argument `lambda_`. Expected a float >= 0. "
                f"Received: lambda_={lambda_!r}"
            )
        valid = True
    else:
        valid = callable(lambda_)
    if not valid:
        raise ValueError(
            "Invalid value for argument `lambda_`. Expected a float >= 0, or "
            "a schedule of the training step (a `keras.optimizers.schedules."
            "LearningRateSchedule` or a callable). Received: "
            f"lambda_={lambda_!r}"
        )


def _check_distill_features(distill_features, distance, distill_outputs):
    """Raises `ValueError` unless `distill_features` is usable."""
    if distill_features is None:
        if distill_outputs is not None and not distill_outputs:
            raise ValueError(
                "Invalid value for argument `distill_outputs`. Expected at "
                "least one output to keep close, or layers named in "
                "`distill_features`. Received: distill_outputs=[]"
            )
        return
    if not outputs.is_name_list(distill_features) or not distill_features:
        raise ValueError(
            "Invalid value for argument `distill_features`. Expected None or "
            "a non-empty list of distinct layer names. Received: "
            f"distill_features={distill_features!r}"
        )
    if distance == "kl":
        raise ValueError(
            "Invalid value for argument `distill_features`. Expected "
            "distance 'mse' or 'squared_l2': 'kl' compares class "
            "probabilities, not features. Received: "
            f"distill_features={distill_features!r} with distance='kl'"
        )


def _feature_extractor(model, names, role):
    """A model sharing `model`'s layers that returns `(outputs, features)`."""
    if names is None:
        return None
    try:
        features = {name: model.get_layer(name).output for name in names}
        return keras.Model(
            _symbolic(model, "input"), (_symbolic(model, "output"), features)
        )
    except (ValueError, AttributeError) as error:
        raise ValueError(
            "Invalid value for argument `distill_features`. Expected names "
            f"of layers of the {role}, a built Functional or Sequential "
            f"model. Received: distill_features={names!r} ({error})"
        ) from error


def _symbolic(model, kind):
    """`model.input` or `model.output` (`kind`), Sequential models included."""
    try:
        return getattr(model, kind)
    except AttributeError:
        # A Sequential model that was built but never called has only the
        # plural attribute, with one tensor.
        (tensor,) = getattr(model, f"{kind}s")
        return tensor


def _check_feature_shapes(teacher_extractor, student_extractor):
    """Raises `ValueError` if paired teacher and student features differ."""
    teacher = teacher_extractor.output[1]
    student = student_extractor.output[1]
    for name, feature in student.items():
        if tuple(feature.shape) != tuple(teacher[name].shape):
            raise ValueError(
                "Invalid value for argument `distill_features`. Expected "
                "teacher and student features of the same shape. Received: "
                f"layer {name!r} gives {tuple(teacher[name].shape)} in the "
                f"teacher and {tuple(feature.shape)} in the student"
            )
