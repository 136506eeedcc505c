"""Fine-tuning a keras-hub task with SFT: the work of `finetune_hub`."""

import keras
import numpy as np

import keras_sft


def read_texts(path, *, labelled):
    """The samples of a UTF-8 text file, one per non-empty line.

    Args:
        path: String, the file.
        labelled: Bool. `True` reads `label<TAB>text` lines (an integer
            class, for a classifier); `False` reads each line as a text
            (for a causal LM).

    Returns:
        `(texts, labels)`, NumPy arrays; `labels` is `None` unless
        `labelled`.
    """
    with open(path, encoding="utf-8") as file:
        lines = [line.rstrip("\n") for line in file if line.strip()]
    if not labelled:
        return np.array(lines), None
    labels, texts = zip(*(line.split("\t", 1) for line in lines), strict=True)
    return np.array(texts), np.array([int(label) for label in labels])


# The task classes `--task` names; `from_preset` needs the kind of task.
TASKS = ("causal_lm", "text_classifier")


def finetune_hub(
    preset,
    train_file,
    *,
    task="causal_lm",
    output_preset,
    export_dir=None,
    lambda_=0.5,
    distance="kl",
    batch_size=32,
    epochs=1,
    learning_rate=1e-4,
    seed=0,
    retained_file=None,
):
    """Fine-tunes the keras-hub task of `preset` with `keras_sft.SFTModel`.

    The teacher is a frozen copy of the task as loaded. The task's own
    preprocessor turns the raw texts into its inputs; a causal LM is
    trained token by token, its padding mask weighing both terms.

    Args:
        preset: String, a keras-hub preset: a local directory written by
            `save_to_preset`, or a hub handle where the network allows.
        train_file: String, the training texts (see `read_texts`).
        task: String, one of `TASKS`: the kind of task the preset holds.
            Defaults to `"causal_lm"`.
        output_preset: String, the directory the fine-tuned task is saved
            to with `save_to_preset`.
        export_dir: String or `None`, a directory to export the student to
            with `SFTModel.export`. Defaults to `None`.
        lambda_: Float >= 0, as in `keras_sft.SFTModel`. Defaults to `0.5`.
        distance: String, as in `keras_sft.SFTModel`. Defaults to `"kl"`.
        batch_size: Integer, the batch size. Defaults to `32`.
        epochs: Integer, the number of epochs. Defaults to `1`.
        learning_rate: Float, Adam's learning rate. Defaults to `1e-4`.
        seed: Integer, the seed of Keras's randomness. Defaults to `0`.
        retained_file: String or `None`, `label<TAB>text` lines of the
            task the classifier knew before: each epoch's logs then carry
            `retained_accuracy` and `teacher_agreement` on them
            (`keras_sft.ForgettingMonitor`). For a `"text_classifier"`
            only. Defaults to `None`.

    Returns:
        The `keras.callbacks.History` of the fine-tuning.
    """
    # Imported here so that the other examples run without keras-hub.
    import keras_hub

    if task not in TASKS:
        raise ValueError(
            f"Invalid value for argument `task`. Expected one of {TASKS}. "
            f"Received: task={task!r}"
        )
    if retained_file is not None and task != "text_classifier":
        # A causal LM's top class is per token, padding included.
        raise ValueError(
            "Invalid value for argument `retained_file`. Expected None "
            "unless task='text_classifier'. Received: "
            f"retained_file={retained_file!r} with task={task!r}"
        )
    keras.utils.set_random_seed(seed)
    classes = {
        "causal_lm": keras_hub.models.CausalLM,
        "text_classifier": keras_hub.models.TextClassifier,
    }
    student = classes[task].from_preset(preset)
    texts, labels = read_texts(train_file, labelled=task != "causal_lm")
    model = keras_sft.SFTModel(student, lambda_=lambda_, distance=distance)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    callbacks = []
    if retained_file is not None:
        callbacks.append(
            keras_sft.ForgettingMonitor(
                *read_texts(retained_file, labelled=True)
            )
        )
    history = model.fit(
        texts,
        labels,
        batch_size=batch_size,
        epochs=epochs,
        verbose=2,
        callbacks=callbacks,
    )
    student.save_to_preset(output_preset)
    if export_dir:
        model.export(export_dir, verbose=False)
    return history
