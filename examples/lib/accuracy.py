"""Top-1 accuracy of a classifier, overall and per class group."""

import numpy as np


def accuracy(logits, labels):
    """The fraction of `labels` that the arg-max of `logits` matches."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def accuracy_by_group(model, dataset, groups=()):
    """Returns the accuracy of `model` overall and on each class group.

    Args:
        model: A `keras.Model` with logits output.
        dataset: Batched `tf.data.Dataset` of `(image, label)`, in a fixed
            order.
        groups: Sequence of sequences of class labels. Defaults to `()`.

    Returns:
        A dict: `"overall"`, then one key per group, `"0-4"` for classes
        0 to 4 (or `"0,2,7"` when not contiguous), to an accuracy in
        `[0, 1]` (`nan` for a group with no sample).

    Raises:
        ValueError: if a label is not below the model's number of outputs
            (its accuracy would be meaningless).
    """
    labels = np.concatenate([y for _, y in dataset.as_numpy_iterator()])
    logits = model.predict(dataset, verbose=0)
    if labels.max() >= logits.shape[-1]:
        raise ValueError(
            f"The labels go up to {labels.max()} but the model has "
            f"{logits.shape[-1]} outputs; evaluate it on its own classes "
            "(--classes) or pass a model with an output per class"
        )
    predicted = np.argmax(logits, axis=-1)
    correct = predicted == labels
    accuracies = {"overall": float(np.mean(correct))}
    for group in groups:
        in_group = np.isin(labels, list(group))
        accuracies[group_name(group)] = (
            float(np.mean(correct[in_group])) if in_group.any() else np.nan
        )
    return accuracies


def group_name(group):
    """`"0-4"` for a contiguous run of classes, else `"0,2,7"`."""
    group = sorted(group)
    if len(group) > 1 and group == list(range(group[0], group[-1] + 1)):
        return f"{group[0]}-{group[-1]}"
    return ",".join(str(c) for c in group)
