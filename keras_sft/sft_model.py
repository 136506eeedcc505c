"""SFTModel: fine-tuning with a frozen-teacher consistency term."""

import inspect
import numbers

import keras
import tensorflow as tf
from keras import ops

from keras_sft import _anchors
from keras_sft import _batch
from keras_sft import _checks
from keras_sft import _keras_compat
from keras_sft import _outputs
from keras_sft import _sft_loss
from keras_sft import _shared_teacher
from keras_sft import _step_guard
from keras_sft import _task_preprocessing
from keras_sft import _teacher_outputs
from keras_sft import _teacher_student_model
from keras_sft import adaptive_lambda
from keras_sft import data_checks
from keras_sft import forgetting_monitor
from keras_sft import teacher as teacher_module

# `SFTModel.fit`'s signature: `keras.Model.fit`'s arguments, by position
# or name, then the anchor options.
_KERAS_FIT_SIGNATURE = inspect.signature(keras.Model.fit)
_FIT_SIGNATURE = _KERAS_FIT_SIGNATURE.replace(
    parameters=[
        *_KERAS_FIT_SIGNATURE.parameters.values(),
        *(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d)
            for name, d in (
                ("anchor_x", None),
                ("anchor_mode", "replace"),
                ("anchor_batch_size", None),
            )
        ),
    ]
)


@keras.saving.register_keras_serializable(package="keras_sft")
class SFTModel(_teacher_student_model.TeacherStudentModel):
    """Fine-tunes a pretrained model while keeping its outputs near a teacher.

    Supervised fine-tuning (SFT) minimises

        L = L_task(y, student(x)) + lambda_ * D(teacher(x), student(x))

    where `teacher` is a frozen copy of the pretrained model taken before
    fine-tuning and `student` starts from the same weights and is trained.
    Any `tf.distribute` strategy and `mixed_float16` give the one-device
    float32 gradient (docs/design.md). Logs `loss`, `task_loss`,
    `distill_loss` (before `lambda_`), per-output and per-feature terms
    (docs/user_guide.md), then the compiled metrics. `predict` and `call`
    return the student's outputs.

    Example:

    ```python
    pretrained = keras.models.load_model("pretrained.keras")
    model = keras_sft.SFTModel(pretrained)
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(new_task_dataset, epochs=5)
    keras_sft.export_saved_model(model, "/tmp/student")
    ```

    Args:
        student: `keras.Model`, the pretrained model to fine-tune, trained
            in place (`model.student is student`).
        teacher: `keras.Model` or `None`, the frozen reference; its
            outputs pair with the student outputs of the same name (it may
            have only some). `None` takes a frozen copy of `student` now
            (`keras_sft.clone_teacher`) that shares the weights the
            student does not train. Defaults to `None`.
        lambda_: Float >= 0, the weight of the consistency term (`0` is
            plain fine-tuning), or a schedule of the optimizer's step (a
            `keras.optimizers.schedules.LearningRateSchedule`, saved with
            the model, or a callable returning a value >= 0), or a
            `keras_sft.AdaptiveLambda` that `fit` adapts to hold
            `distill_loss` at a target; a value that changes is logged as
            `lambda`. Defaults to `0.3`: with `"normalized_mse"`, the best
            worst case against plain fine-tuning over the model families,
            shifts and seeds of docs/forgetting.md.
        distance: String, the distance `D` (docs/user_guide.md,
            "Distances"): `"normalized_mse"` (invariant to the scale of
            the logits; `"mse"` on an output of one unit), `"mse"`,
            `"squared_l2"` or `"kl"` (with `temperature`). Defaults to
            `"normalized_mse"`.
        temperature: Float > 0, the temperature `T` of `"kl"`. Defaults to
            `1.0`.
        distill_outputs: List of output names or `None` (every teacher
            output), the outputs kept close to the teacher's; `[]` keeps
            none (with `distill_features`). Defaults to `None`.
        distill_weights: Dict from output or feature name to float >= 0,
            the weight of each distance in `distill_loss` (missing names
            weigh 1), or `None`. Defaults to `None`.
        distill_features: List of layer names or `None`: these layers'
            outputs are kept close to the same layers' in the teacher
            with `distance` (any but `"kl"`; Functional or Sequential
            models). Defaults to `None`.
        cache_teacher: Bool. When `fit` gets arrays and three or more
            epochs, keep the teacher's outputs from the first epoch
            (under a `tf.distribute` strategy: from one `predict` pass,
            given two or more epochs) instead of computing them at every
            step, where that pays (docs/user_guide.md, "Teacher-output
            caching"). Defaults to `True`.
        guard_nonfinite: Bool. Never apply a step whose loss, terms,
            `lambda_` or gradients are not finite (or whose `lambda_` is
            negative): `fit` stops with a `keras_sft.NonFiniteLossError`
            naming the epoch, the step and the term, and the student keeps
            the weights of the last finite step. Under a
            `LossScaleOptimizer`, which skips non-finite gradients itself,
            only the loss is checked. Defaults to `True`.
        teacher_dtype: String or `None`. `"bfloat16"` or `"float16"` runs
            the frozen teacher in that precision and stores the weights it
            holds apart from the student in it (half their float32
            memory); `"int8"` quantizes, with Keras's `quantize("int8")`,
            the `Dense`, `EinsumDense` and `Embedding` layers whose
            weights it holds (a quarter of their float32 memory). The
            teacher given as `teacher` is changed in place. The
            consistency term is still computed in float32, on outputs
            that differ from the float32 teacher's by the rounding of that
            precision (docs/performance.md). `None` keeps the teacher's
            own precision. Defaults to `None`.
        **kwargs: Passed to `keras.Model` (for example `name`). The dtype
            policy defaults to the student's.

    Reference:
        - Li & Hoiem, "Learning without Forgetting", TPAMI 2017
          (https://arxiv.org/abs/1606.09282).
        - Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
          Network", 2015 (https://arxiv.org/abs/1503.02531).
        - Sun et al., "Logit Standardization in Knowledge Distillation",
          CVPR 2024 (https://arxiv.org/abs/2403.01427), for the default
          distance.
    """

    def __init__(
        self,
        student,
        teacher=None,
        lambda_=0.3,
        distance="normalized_mse",
        temperature=1.0,
        *,
        distill_outputs=None,
        distill_weights=None,
        distill_features=None,
        cache_teacher=True,
        guard_nonfinite=True,
        teacher_dtype=None,
        **kwargs,
    ):
        if teacher_dtype is not None:
            _checks.check_one_of(
                "teacher_dtype", teacher_dtype, teacher_module.TEACHER_DTYPES
            )
        _checks.check_sft_arguments(
            student,
            teacher,
            lambda_,
            distance,
            temperature,
            distill_outputs=distill_outputs,
            distill_weights=distill_weights,
            distill_features=distill_features,
            cache_teacher=cache_teacher,
            guard_nonfinite=guard_nonfinite,
        )
        student_names, teacher_names, distilled = _outputs.resolve(
            student,
            teacher,
            (distill_outputs, distill_weights, distill_features),
        )
        kwargs.setdefault("dtype", student.dtype_policy)
        super().__init__(**kwargs)

        self.student = student
        self.teacher = (
            _shared_teacher.shared_teacher(
                student, on_unshare=self._forget_traced
            )
            if teacher is None
            else teacher
        )
        self.teacher.trainable = False
        if teacher_dtype is not None:
            teacher_module.cast_teacher(
                self.teacher, teacher_dtype, shared_weights=student.weights
            )
        self.lambda_ = (
            float(lambda_) if isinstance(lambda_, numbers.Real) else lambda_
        )
        if isinstance(lambda_, adaptive_lambda.AdaptiveLambda):
            # A weight of the model, made in its strategy's scope: saved
            # with it and in its backups.
            self.lambda_variable = lambda_.build()
        self.distance = distance
        self.temperature = float(temperature)
        self.distill_outputs = _copy(list, distill_outputs)
        self.distill_weights = _copy(
            lambda d: {name: float(w) for name, w in d.items()},
            distill_weights,
        )
        self.distill_features = _copy(list, distill_features)
        self.cache_teacher = cache_teacher
        self.guard_nonfinite = guard_nonfinite
        self.teacher_dtype = teacher_dtype
        # Not a model weight: the guard's state lives for one `fit`.
        self._step_guard = _step_guard.StepGuard() if guard_nonfinite else None
        # Each batch's labels and sample weights, checked in the training
        # and the evaluation steps (validation runs inside `fit`).
        self._train_check = data_checks.BatchCheck()
        self._test_check = data_checks.BatchCheck()
        if student_names is not None:
            # `compile` maps dict losses and metrics of list outputs by name.
            self.output_names = student_names
        # Where each step's teacher outputs come from, with the state that
        # serves them (feature extractors, caches, the frozen prefix).
        self._teacher_outputs = _teacher_outputs.TeacherOutputs(
            self.teacher, student, self.distill_features
        )
        self._student_names = student_names
        self._teacher_names = teacher_names
        # Per-output logs need their trackers before training, made with
        # the model (inside a strategy's scope).
        (
            self.task_loss_tracker,
            self.distill_loss_tracker,
            self.output_task_loss_trackers,
            self.output_distill_loss_trackers,
            self.feature_distill_loss_trackers,
        ) = _sft_loss.trackers(student_names, distilled, self.distill_features)
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
        """Configures the model for training, as `keras.Model.compile`.

        `jit_compile` and `steps_per_execution` keep Keras's defaults
        (docs/performance.md, docs/design.md).

        Args:
            optimizer: As in `keras.Model.compile`. Defaults to `"rmsprop"`.
            loss: The task loss `L_task` on the student's outputs, as in
                `keras.Model.compile` (one loss, a list in output order, or
                a dict by output name; `None` values and missing keys give
                an output no task loss). `None` means the student's own
                `compute_loss` where its class overrides it (a keras-hub
                object detector's, with the losses the student was compiled
                with), else
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
                for every output. Defaults to `None`.
            loss_weights: Float, list or dict, the weight of each output's
                task loss in `task_loss` (`None` with the student's own
                `compute_loss`). Defaults to `None` (weight 1).
            metrics: Metrics of the student's outputs against `y`.
                Defaults to `None`.
            **kwargs: Passed to `keras.Model.compile` (for example
                `jit_compile`, `steps_per_execution`).
        """
        model_loss = (
            _sft_loss.own_compute_loss(self.student) if loss is None else None
        )
        if model_loss is None and loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if model_loss is not None:
            # The student's own loss weighs its outputs itself, with the
            # losses and weights the student was compiled with.
            if loss_weights is not None:
                raise _checks.argument_error(
                    "loss_weights",
                    "None where the student's own `compute_loss` is the "
                    f"task loss (that of {type(self.student).__name__}: "
                    "compile the student to weigh its losses)",
                    loss_weights,
                )
        elif self._student_names is not None and len(self._student_names) > 1:
            _sft_loss.output_losses(loss, loss_weights, self._student_names)
        elif getattr(self.student, "outputs", None):
            _checks.check_logits_loss(self.student, loss)
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            **kwargs,
        )
        self._task_loss = loss
        self._task_loss_weights = loss_weights
        names = self._student_names
        for check in (self._train_check, self._test_check):
            check.rule = data_checks.label_rule(loss, names)
            check.output_rules = data_checks.output_label_rules(loss, names)
        self._sft_loss = _sft_loss.SFTLoss(
            self.distance,
            temperature=self.temperature,
            task_loss=_keras_compat.compile_loss(self),
            loss=loss,
            loss_weights=loss_weights,
            student_names=self._student_names,
            teacher_names=self._teacher_names,
            distill_outputs=self.distill_outputs,
            distill_weights=self.distill_weights,
            distill_features=self.distill_features,
            model_loss=model_loss,
        )

    @property
    def metrics(self):
        # Keras lists its loss tracker, then the compiled metrics, then ours;
        # put the loss terms right after `loss` so logs read in order. The
        # per-output losses of Keras's own `CompileLoss` are left out: ours,
        # of the same names, replace them (Keras's weigh batches by their
        # static size, which is unknown for the last, partial batch).
        trackers = self._term_trackers()
        terms = trackers[:2]
        if self._task_loss is not None and self.output_task_loss_trackers:
            with_loss = _sft_loss.output_losses(
                self._task_loss, self._task_loss_weights, self._student_names
            )
            terms += [self.output_task_loss_trackers[n] for n in with_loss]
        terms += trackers[2 + len(self.output_task_loss_trackers) :]
        compile_loss = _keras_compat.compile_loss(self)
        compiled = compile_loss.metrics if compile_loss else []
        hidden = [*trackers, *compiled]
        others = [m for m in super().metrics if not any(m is h for h in hidden)]
        return others[:1] + terms + others[1:]

    def _term_trackers(self):
        return [
            self.task_loss_tracker,
            self.distill_loss_tracker,
            *self.output_task_loss_trackers.values(),
            *self.output_distill_loss_trackers.values(),
            *self.feature_distill_loss_trackers.values(),
        ]

    def _teacher_took_copies(self):
        # An int8 teacher holds its own layers in int8, those it copies
        # when the student unfreezes them too: in the freeze-then-unfreeze
        # recipe they are most of its weights.
        if getattr(self, "teacher_dtype", None) == "int8":
            with self.distribute_strategy.scope():
                teacher_module.cast_teacher(
                    self.teacher, "int8", shared_weights=self.student.weights
                )

    def _current_lambda(self):
        """`lambda_`, or its schedule's value at the optimizer's step."""
        if isinstance(self.lambda_, float):
            return self.lambda_
        return ops.cast(self.lambda_(self.optimizer.iterations), "float32")

    def fit(
        self,
        *args,
        anchor_x=None,
        anchor_mode="replace",
        anchor_batch_size=None,
        **kwargs,
    ):
        """Trains the student; takes the arguments of `keras.Model.fit`.

        Example:

        ```python
        model = keras_sft.SFTModel(pretrained)
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=128, epochs=10, validation_split=0.1)
        model.fit(x, y, epochs=10, anchor_x=pretraining_sample)
        ```

        Args:
            anchor_x: Unlabeled inputs from the old distribution (a sample
                of the pretraining inputs), or `None`: arrays cycled in
                reshuffled batches, or a `tf.data.Dataset` of batches,
                repeated. Each step computes the consistency term on one
                anchor batch; validation runs without anchors
                (docs/user_guide.md, "Anchor inputs"). Defaults to `None`.
            anchor_mode: String, `"replace"` (the consistency term on the
                anchors alone; the teacher does not run on the labelled
                batch) or `"both"` (the mean of the term on the labelled
                batch and on the anchors). Defaults to `"replace"`.
            anchor_batch_size: Int > 0, the anchors per step when
                `anchor_x` is an array. Defaults to `None`: the training
                batch size.
        """
        self._reshare_restored()
        arguments = _FIT_SIGNATURE.bind(None, *args, **kwargs)
        arguments = dict(list(arguments.arguments.items())[1:])
        arguments = _task_preprocessing.fit_arguments(self.student, arguments)
        # Before the packing below: the checks read the user's own data.
        data_checks.check_fit_data(
            self.student, arguments, rule=self._train_check.rule
        )
        _keras_compat.set_monitor_modes(
            arguments.get("callbacks"),
            self._log_directions(arguments.get("callbacks")),
        )
        arguments["callbacks"] = _keras_compat.with_graph_summaries(
            arguments.get("callbacks"), self.student
        )
        arguments = self._train_check.with_callback(arguments)
        if self._step_guard is not None:
            arguments = self._step_guard.with_callback(arguments)
        arguments = adaptive_lambda.fit_arguments(self, arguments)
        # In "replace" mode the teacher never runs on the labelled inputs,
        # so caching its outputs there would be waste.
        caching = anchor_x is None or anchor_mode == "both"
        with (
            self._train_check.stopping("fit"),
            self._teacher_outputs.cached_fit(
                self, arguments, enabled=caching
            ) as arguments,
            _step_guard.stopping(self._step_guard),
        ):
            arguments = _anchors.fit_arguments(
                self,
                arguments,
                anchor_x=anchor_x,
                anchor_mode=anchor_mode,
                anchor_batch_size=anchor_batch_size,
            )
            return super().fit(**arguments)

    fit.__signature__ = _FIT_SIGNATURE

    def _flatten_metrics_in_order(self, logs):
        # The list that `evaluate` and the `*_on_batch` methods return
        # without `return_dict` is read by position (`loss, accuracy =
        # model.evaluate(...)`): it is the plain model's, without the
        # terms it lacks, which stay in the dict and in `fit`'s logs.
        # Keras 3.15's private hook for that list; checked on 3.15.1.
        keras_names = {
            f"{name}_loss"
            for name, tracker in self.output_task_loss_trackers.items()
            if tracker.name == f"{name}_loss"
        }
        ours = {t.name for t in self._term_trackers()} - keras_names
        ours.add("lambda")
        return super()._flatten_metrics_in_order(
            {name: value for name, value in logs.items() if name not in ours}
        )

    def _log_directions(self, callbacks):
        """`"min"` or `"max"`, whichever is better, for each log of `fit`
        that Keras's monitors cannot tell: the loss terms, and what
        `keras_sft.ForgettingMonitor` adds."""
        directions = {t.name: "min" for t in self._term_trackers()}
        callbacks = getattr(callbacks, "callbacks", callbacks) or ()
        if any(
            isinstance(c, forgetting_monitor.ForgettingMonitor)
            for c in callbacks
        ):
            directions.update(forgetting_monitor.LOG_DIRECTIONS)
        return directions

    def train_on_batch(self, *args, **kwargs):
        with (
            self._train_check.stopping("batch"),
            _step_guard.stopping(self._step_guard),
        ):
            return super().train_on_batch(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        inside_fit = _keras_compat.evaluates_inside_fit(kwargs)
        with self._test_check.stopping(
            "validation" if inside_fit else "evaluate"
        ):
            return super().evaluate(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        with self._test_check.stopping("batch"):
            return super().test_on_batch(*args, **kwargs)

    def make_train_function(self, force=False):
        new = force or self.train_function is None
        function = super().make_train_function(force=force)
        if new:
            # After the teacher unshared what the user unfroze, before the
            # step is traced: the step reads the split, never makes it.
            self._teacher_outputs.split_prefix()
        return function

    def train_step(self, data):
        # Run where the step is traced: TensorFlow 2.21 would keep the
        # traced step, and through it the model's weights and optimizer
        # state, for as long as the process lives.
        with _keras_compat.releasing_traced_graphs():
            return self._train_step(data)

    def _train_step(self, data):
        batch = _batch.unpack(data)
        lambda_ = self._current_lambda()
        teacher, student_forward = self._teacher_outputs.forward(
            batch, training=True
        )
        with tf.GradientTape() as tape:
            student = student_forward()
            batch, valid = self._train_check.check(
                batch, student.inputs.outputs
            )
            total, terms = self._sft_loss.step_terms(
                batch, teacher, student, lambda_, self.student.losses
            )
            scaled_total = self.optimizer.scale_loss(total)
        trainable_weights = _keras_compat.trained_weights(
            self.student, self.optimizer
        )
        gradients = tape.gradient(scaled_total, trainable_weights)
        _step_guard.apply_gradients(
            self._step_guard,
            self.optimizer,
            (gradients, trainable_weights),
            batch[:3],
            (lambda_, terms, total),
            valid=valid,
            jit_compile=self.jit_compile,
        )
        return self._step_logs(batch, student, total, terms)

    def test_step(self, data):
        batch = _batch.unpack(data)
        teacher, student_forward = self._teacher_outputs.forward(
            batch, training=False
        )
        student = student_forward()
        batch, _ = self._test_check.check(batch, student.inputs.outputs)
        total, terms = self._sft_loss.step_terms(
            batch,
            teacher,
            student,
            self._current_lambda(),
            self.student.losses,
            training=False,
        )
        return self._step_logs(batch, student, total, terms)

    def _step_logs(self, batch, student, total, terms):
        """Tracks the loss terms; returns the step's logs (with a scheduled
        `lambda_`'s current value)."""
        x, y, sample_weight = batch[:3]
        _sft_loss.track(
            _keras_compat.loss_tracker(self),
            self._term_trackers(),
            x,
            total,
            terms,
        )
        logs = self.compute_metrics(
            x, y, student.inputs.outputs, sample_weight=sample_weight
        )
        if not isinstance(self.lambda_, float):
            # Read after the update: the value at the optimizer's current
            # step, the one the next step uses.
            logs = {**logs, "lambda": self._current_lambda()}
        return _keras_compat.reducible_logs(self.distribute_strategy, logs)

    # Keras builds its compiled loss through `compute_loss` with the raw
    # sample weights; both hooks broadcast them over dense outputs as the
    # step does.
    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        weights = self._sample_weights(y_pred, sample_weight)
        return super().compute_loss(x, y, y_pred, weights, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        weights = self._sample_weights(y_pred, sample_weight)
        return super().compute_metrics(x, y, y_pred, weights)

    def _sample_weights(self, y_pred, sample_weight):
        return _sft_loss.structured_sample_weight(
            y_pred, sample_weight, self._student_names
        )

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        lambda_ = self.lambda_
        config.update(
            student=serialize(self.student),
            teacher=serialize(self.teacher),
            lambda_=lambda_
            if isinstance(lambda_, float)
            else serialize(lambda_),
        )
        config.update({name: getattr(self, name) for name in _CONFIG})
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
        if config.get("teacher_dtype") != "int8":
            return cls(**config)
        # The saved teacher's config holds which layers were quantized;
        # its other layers held float weights of their own (copied since,
        # or by a write outside `SFTModel`), which the saved weights fill.
        teacher_dtype = config.pop("teacher_dtype")
        model = cls(**config)
        model.teacher_dtype = teacher_dtype
        return model


# The constructor's arguments that are stored as they were given.
_CONFIG = ("distance", "temperature", "cache_teacher", "guard_nonfinite")
_CONFIG += ("teacher_dtype",)
_CONFIG += ("distill_outputs", "distill_weights", "distill_features")


def _copy(kind, value):
    """`kind(value)`, a copy the caller cannot change, or `None`."""
    return None if value is None else kind(value)
