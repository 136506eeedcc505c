"""SFTModel: fine-tuning with a frozen-teacher consistency term."""

import contextlib
import numbers

import keras
import tensorflow as tf
from keras import ops

from keras_sft import anchor_data
from keras_sft import anchors
from keras_sft import checks
from keras_sft import data_checks
from keras_sft import features
from keras_sft import fit_cache
from keras_sft import keras_compat
from keras_sft import outputs
from keras_sft import sft_loss
from keras_sft import shared_teacher
from keras_sft import step_guard
from keras_sft import task_preprocessing


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

    The teacher runs with `training=False` outside the gradient tape. Both
    terms are reduced like Keras losses (per-pixel outputs averaged over
    their positions, `sample_weight` honoured) and divided by the number of
    replicas, so under any `tf.distribute` strategy the summed gradient is
    the one-device gradient of the global batch; the total goes through
    `optimizer.scale_loss` for `mixed_float16`; distances are computed in
    float32 (docs/design.md). Students with several outputs take
    `compile`'s usual `loss=` structure, and teacher outputs pair with the
    student outputs of the same name, so the teacher may have only some
    of them (the old head, when the student has grown a new one).

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
    model = keras_sft.SFTModel(pretrained)
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(new_task_dataset, epochs=5)
    keras_sft.export_saved_model(model, "/tmp/student")
    ```

    Args:
        student: `keras.Model`, the pretrained model to fine-tune. It is
            trained in place: `model.student is student`.
        teacher: `keras.Model` or `None`. The frozen reference; it is set to
            `trainable=False`. `None` takes a frozen clone of `student`
            (`keras_sft.clone_teacher`) now, before any training, that
            shares the weights the student does not train (frozen
            layers, LoRA base kernels: `keras_sft.shared_teacher`).
            Each of its outputs must have the shape of the student
            output of the same name. Defaults to `None`.
        lambda_: Float >= 0, weight of the consistency term (`0` is plain
            fine-tuning), or a schedule of the optimizer's step: a
            `keras.optimizers.schedules.LearningRateSchedule` (saved with
            the model) or a callable returning a value >= 0; its current
            value is then logged as `lambda`. Defaults to `0.05`: with
            `"mse"`, the best value without tuning across the shifts of
            docs/forgetting.md (tied with `"normalized_mse"` at 0.3).
        distance: String, the consistency distance `D`: `"mse"` (mean
            over output units of the squared difference, as
            `keras.losses.MeanSquaredError`), `"normalized_mse"` (`"mse"`
            of logits centred per example and divided by the teacher's
            standard deviation over units: invariant to the scale of the
            logits; not for outputs of one unit), `"squared_l2"` (sum
            over output units, the written `||f(x) - f'(x)||^2`) or
            `"kl"` (`T^2 * KL(softmax(t/T) || softmax(s/T))`, as in
            Learning without Forgetting). Defaults to `"mse"`.
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
            NumPy arrays or tensors, not a dataset), keep the teacher's
            outputs on them (and on array `validation_data`) instead of
            computing them at every step: the teacher is frozen and runs
            with `training=False`, so the result is the live teacher's
            (within float rounding). On one device the first epoch's
            steps store the outputs they compute anyway, and later epochs
            run the student alone; under a `tf.distribute` strategy one
            `teacher.predict` pass computes them before the first epoch.
            It keeps one output per example in memory, so it is not done
            where the outputs would take more memory than `x` (per-pixel
            logits of many classes), nor for a single epoch (nothing to
            reuse), with `distill_features`, `lambda_=0` or several
            workers, or for datasets (see
            `keras_sft.cache_teacher_outputs`). Defaults to `True`.
        guard_nonfinite: Bool. Never apply a training step whose loss,
            loss terms, `lambda_` or gradients are not finite (or whose
            `lambda_` is negative); `fit` then stops with a
            `RuntimeError` naming the epoch, the step and the term, and
            the student keeps the weights of the last finite step. Under
            a `LossScaleOptimizer` only the loss is checked: it skips
            non-finite gradients itself. `False` trains as plain Keras
            does (see `keras_sft.step_guard`). Defaults to `True`.
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
        lambda_=0.05,
        distance="mse",
        temperature=1.0,
        *,
        distill_outputs=None,
        distill_weights=None,
        distill_features=None,
        cache_teacher=True,
        guard_nonfinite=True,
        **kwargs,
    ):
        checks.check_sft_arguments(
            student,
            teacher,
            lambda_,
            distance,
            temperature,
            distill_outputs=distill_outputs,
            distill_weights=distill_weights,
            distill_features=distill_features,
            cache_teacher=cache_teacher,
        )
        checks.check_bool("guard_nonfinite", guard_nonfinite)
        student_names = outputs.output_names(student)
        teacher_names = (
            student_names if teacher is None else outputs.output_names(teacher)
        )
        distilled = outputs.distilled_names(
            student_names, teacher_names, distill_outputs
        )
        outputs.check_distill_weight_names(
            distill_weights, distilled, distill_features
        )
        if teacher is not None and distilled is not None:
            outputs.check_output_shapes(teacher, student, distilled)
        outputs.check_output_units(student, distance, distilled)
        kwargs.setdefault("dtype", student.dtype_policy)
        super().__init__(**kwargs)

        self.student = student
        self.teacher = (
            shared_teacher.shared_teacher(student)
            if teacher is None
            else teacher
        )
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
        self.guard_nonfinite = guard_nonfinite
        # Not a model weight: the guard's state lives for one `fit`.
        self._step_guard = step_guard.StepGuard() if guard_nonfinite else None
        if student_names is not None:
            # `compile` maps dict losses and metrics of list outputs by name.
            self.output_names = student_names
        self._teacher_extractor, self._student_extractor = features.extractors(
            self.teacher, student, self.distill_features
        )

        self._student_names = student_names
        self._teacher_names = teacher_names
        self.task_loss_tracker = keras.metrics.Mean(name="task_loss")
        self.distill_loss_tracker = keras.metrics.Mean(name="distill_loss")
        # Per-output logs need the output names before training, so that the
        # trackers are created with the model (inside a strategy's scope).
        multi_output = student_names is not None and len(student_names) > 1
        self.output_task_loss_trackers = sft_loss.means(
            student_names if multi_output else [], "task_loss"
        )
        self.output_distill_loss_trackers = sft_loss.means(
            distilled if multi_output else [], "distill_loss"
        )
        self.feature_distill_loss_trackers = sft_loss.means(
            self.distill_features or [], "distill_loss"
        )
        self._task_loss = None
        self._task_loss_weights = None
        self._sft_loss = None

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        **kwargs,
    ):
        """Configures the model for training.

        `jit_compile` and `steps_per_execution` keep Keras's defaults
        (docs/performance.md gives the measurements behind them). With
        several steps per execution, per-batch callbacks see the logs of
        one step per execution, so `keras_sft.TerminateOnNaN` stops late
        (the step guard does not: it refuses every later step of the
        execution), and Keras 3.15's multi-step loop fails under
        `MirroredStrategy`: pass `steps_per_execution=16` only for a small
        model on one device.

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
        elif getattr(self.student, "outputs", None):
            checks.check_logits_loss(self.student, loss)
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            **kwargs,
        )
        self._task_loss = loss
        self._task_loss_weights = loss_weights
        self._sft_loss = sft_loss.SFTLoss(
            self.distance,
            temperature=self.temperature,
            task_loss=self._compile_loss,
            loss=loss,
            loss_weights=loss_weights,
            student_names=self._student_names,
            teacher_names=self._teacher_names,
            distill_outputs=self.distill_outputs,
            distill_weights=self.distill_weights,
            distill_features=self.distill_features,
        )

    def compile_from_config(self, config):
        keras_compat.restore_compile(self, config)

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
            shared_teacher.unshare_trained(self)
            self.teacher.trainable = False

    def make_train_function(self, force=False):
        # Layers the user unfroze since the teacher was made would train
        # the weights the teacher shares: it gets its own copies first.
        shared_teacher.unshare_trained(self)
        return super().make_train_function(force=force)

    def load_weights(self, filepath, *args, **kwargs):
        # Keras loads a LoRA layer's merged kernel into its base kernel.
        shared_teacher.unshare_lora(self)
        return super().load_weights(filepath, *args, **kwargs)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def export(self, filepath, **kwargs):
        """Exports the student alone, as `keras.Model.export` does; takes its
        arguments (see also `keras_sft.export_saved_model`)."""
        return self.student.export(filepath, **kwargs)

    def _current_lambda(self):
        """`lambda_`, or its schedule's value at the optimizer's step."""
        if isinstance(self.lambda_, float):
            return self.lambda_
        return ops.cast(self.lambda_(self.optimizer.iterations), "float32")

    def _track(self, x, total, terms):
        """Updates the loss trackers from the step's per-replica values."""
        trackers = [
            self.task_loss_tracker,
            self.distill_loss_tracker,
            *self.output_task_loss_trackers.values(),
            *self.output_distill_loss_trackers.values(),
            *self.feature_distill_loss_trackers.values(),
        ]
        sft_loss.track(self._loss_tracker, trackers, x, total, terms)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Keras builds its compiled loss through this hook with the raw
        # sample weights; broadcast them over dense outputs as our step does.
        return super().compute_loss(
            x,
            y,
            y_pred,
            sft_loss.structured_sample_weight(
                y_pred, sample_weight, self._student_names
            ),
            training=training,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x,
            y,
            y_pred,
            sft_loss.structured_sample_weight(
                y_pred, sample_weight, self._student_names
            ),
        )

    def fit(
        self,
        *args,
        anchor_x=None,
        anchor_mode="replace",
        anchor_batch_size=None,
        **kwargs,
    ):
        """Trains the student; takes the arguments of `keras.Model.fit`.

        With `cache_teacher` (the default), arrays and two or more epochs,
        the teacher's outputs are computed once, in the first epoch,
        instead of at every step (see `cache_teacher`).

        Example:

        ```python
        model = keras_sft.SFTModel(pretrained)
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=128, epochs=10, validation_split=0.1)
        model.fit(x, y, epochs=10, anchor_x=pretraining_sample)
        ```

        Args:
            anchor_x: Unlabeled inputs from the old distribution (for
                example a sample of the pretraining inputs), or `None`: an
                array (or a list or dict of arrays) cycled in reshuffled
                batches, or a `tf.data.Dataset` of batches, repeated. Each
                step reads one anchor batch and computes the consistency
                term on it, every anchor weighing the same; validation
                runs without anchors (docs/user_guide.md, "Anchor
                inputs"). Defaults to `None`.
            anchor_mode: String, `"replace"` (the consistency term on the
                anchors alone: the labelled batch gets the task loss, and
                the teacher does not run on it) or `"both"` (the mean of
                the term on the labelled batch and on the anchors, so that
                `lambda_` keeps its scale). Defaults to `"replace"`.
            anchor_batch_size: Int > 0, the anchors per step when
                `anchor_x` is an array. Defaults to `None`: the
                training batch size.
        """
        arguments = anchors.FIT_SIGNATURE.bind(self, *args, **kwargs)
        arguments = dict(arguments.arguments)
        del arguments["self"]
        arguments = task_preprocessing.fit_arguments(self.student, arguments)
        # Before the packing below: the checks read the user's own data.
        data_checks.check_fit_data(self, arguments)
        if self._step_guard is not None:
            arguments = self._step_guard.with_callback(arguments)
        # In "replace" mode the teacher never runs on the labelled inputs,
        # so caching its outputs there would be waste.
        caching = anchor_x is None or anchor_mode == "both"
        with (
            fit_cache.cached_teacher(
                self, arguments, enabled=caching
            ) as arguments,
            data_checks.one_line_label_errors(),
            self._step_guard.stopping_fit()
            if self._step_guard is not None
            else contextlib.nullcontext(),
        ):
            arguments = anchors.fit_arguments(
                self,
                arguments,
                anchor_x=anchor_x,
                anchor_mode=anchor_mode,
                anchor_batch_size=anchor_batch_size,
            )
            return super().fit(**arguments)

    fit.__signature__ = anchors.FIT_SIGNATURE

    def evaluate(self, *args, **kwargs):
        arguments = task_preprocessing.inference_arguments(
            self.student, keras.Model.evaluate, self, args, kwargs
        )
        with data_checks.one_line_label_errors():
            return super().evaluate(**arguments)

    def predict(self, *args, **kwargs):
        return super().predict(
            **task_preprocessing.inference_arguments(
                self.student, keras.Model.predict, self, args, kwargs
            )
        )

    def train_step(self, data):
        data, anchor_batch = anchor_data.unpack(data)
        x, y, sample_weight, cached = fit_cache.unpack(self, data)
        teacher = None
        if not anchors.replaces(anchor_batch):
            teacher = features.teacher_forward(
                self.teacher, self._teacher_extractor, x, cached
            )
        anchor_teacher = anchors.teacher_forward(self, anchor_batch)
        with tf.GradientTape() as tape:
            student = features.student_forward(
                self.student, self._student_extractor, x, training=True
            )
            total, terms = self._loss_terms(
                y,
                sample_weight,
                teacher,
                student,
                anchors.with_student(self, anchor_batch, anchor_teacher),
            )
            scaled_total = self.optimizer.scale_loss(total)
        trainable_weights = self.student.trainable_weights
        gradients = tape.gradient(scaled_total, trainable_weights)
        if self._step_guard is None or not trainable_weights:
            keras_compat.apply_gradients(
                self.optimizer, gradients, trainable_weights
            )
        else:
            self._step_guard.apply_gradients(
                self.optimizer,
                gradients,
                trainable_weights,
                (x, y, sample_weight),
                [self._current_lambda(), *_terms(terms), total],
            )
        return self._step_logs(x, y, sample_weight, student[0], total, terms)

    def test_step(self, data):
        x, y, sample_weight, cached = fit_cache.unpack(self, data)
        teacher = features.teacher_forward(
            self.teacher, self._teacher_extractor, x, cached
        )
        student = features.student_forward(
            self.student, self._student_extractor, x, training=False
        )
        total, terms = self._loss_terms(y, sample_weight, teacher, student)
        return self._step_logs(x, y, sample_weight, student[0], total, terms)

    def _loss_terms(self, y, sample_weight, teacher, student, anchor=None):
        """`(total, terms)` of the step; `teacher` (`None` where the
        consistency term is on the anchors alone) and `student` are each
        `(outputs, features)`, `anchor` is `(teacher, student)` on the
        anchors or `None`."""
        return self._sft_loss(
            y,
            student[0],
            None if teacher is None else teacher[0],
            sample_weight,
            lambda_=self._current_lambda(),
            features=({}, {}) if teacher is None else (teacher[1], student[1]),
            regularization=self.student.losses,
            anchors=anchor,
        )

    def _step_logs(self, x, y, sample_weight, y_pred, total, terms):
        """Tracks the loss terms; returns the step's logs (with a scheduled
        `lambda_`'s current value)."""
        self._track(x, total, terms)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if not isinstance(self.lambda_, float):
            logs = {**logs, "lambda": self._current_lambda()}
        return keras_compat.reducible_logs(self.distribute_strategy, logs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Builds from one replica's batch (`keras_compat.first_replica_batch`)
        # and, as Keras builds from 3-tuples, without cached outputs.
        if self._distribute_strategy is None:
            return
        data_batch = keras_compat.first_replica_batch(
            self.distribute_strategy, iterator, data_batch
        )
        if data_batch is not None:
            data_batch = fit_cache.strip(anchor_data.unpack(data_batch)[0])
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
                "guard_nonfinite": self.guard_nonfinite,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("student", "teacher"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        if isinstance(config["lambda_"], dict):
            config["lambda_"] = keras.saving.deserialize_keras_object(
                config["lambda_"]
            )
        return cls(**config)


def _terms(terms):
    """`task_loss` and `distill_loss` of a step's `terms`, as float32."""
    return [
        ops.cast(terms[name], "float32")
        for name in ("task_loss", "distill_loss")
    ]
