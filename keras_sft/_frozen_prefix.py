"""Private: the frozen layers that a student and its teacher compute once.

In transfer learning the student's leading layers are often frozen (a
pretrained backbone with `trainable=False`), and `keras_sft._shared_teacher`
gives the teacher the very same variables for them. Both models then
compute the same values there, so `SFTModel`'s training step runs that
prefix once, outside the gradient tape, and feeds its outputs to the rest
of the student (inside the tape) and to the rest of the teacher
(`_teacher_outputs._SharedPrefix`). This module finds where the two
models can be split.

A layer joins the prefix when its inputs all come from the model's inputs
or from prefix layers, it has no trainable weight, its teacher
counterpart holds exactly its variables, it has no activity regularizer,
and it computes the same in training as in inference: no layer drawing
random numbers (`Dropout`, `GaussianNoise`, random augmentation), no
`BatchNormalization` still trainable (a frozen one runs in inference
mode), no layer of another library whose `call` takes `training`.
"""

import collections

import keras

from keras_sft import _keras_compat

# A student and its shared teacher, split where their frozen layers end:
# `prefix` a `keras.Model` from the student's inputs to the frontier (the
# prefix outputs that later layers read), `student_suffix` and
# `teacher_suffix` models from the frontier to each model's outputs.
Split = collections.namedtuple(
    "Split", ["prefix", "student_suffix", "teacher_suffix"]
)


def split(student, teacher):
    """The `Split` of `student` and its `teacher`, or `None` where no layer
    can be shared."""
    found = _frontier_and_graphs(student, teacher)
    if found is None:
        return None
    frontier, student_graph, teacher_graph, pairs = found
    return Split(
        keras.Model(student_graph[0], frontier),
        keras.Model(frontier, student_graph[1]),
        keras.Model([pairs[id(t)] for t in frontier], teacher_graph[1]),
    )


def shares(student, teacher):
    """Whether `split` finds layers to share, without building its models."""
    return _frontier_and_graphs(student, teacher) is not None


def _frontier_and_graphs(student, teacher):
    """The frontier of the shared prefix, both models' graphs and the
    pairing of their tensors, or `None` where no layer can be shared."""
    student_graph = _keras_compat.functional_graph(student)
    teacher_graph = _keras_compat.functional_graph(teacher)
    if student_graph is None or teacher_graph is None:
        return None
    shared = {id(w) for w in student.weights}
    if not any(id(w) in shared for w in teacher.weights):
        # A teacher given explicitly: its layers may compute otherwise.
        return None
    pairs = _pair_tensors(student_graph, teacher_graph)
    if pairs is None:
        return None
    prefix = _prefix_tensors(student_graph, pairs)
    outputs = keras.tree.flatten(student_graph[1])
    if prefix is None or any(id(t) in prefix for t in outputs):
        return None
    frontier = _frontier(student_graph, prefix)
    if any(map(_keras_compat.has_mask, frontier)):
        return None
    return frontier, student_graph, teacher_graph, pairs


def _pair_tensors(student_graph, teacher_graph):
    """Maps `id` of each student tensor to the teacher tensor in the same
    place, or `None` where the two graphs are not built alike."""
    student_outputs = keras.tree.flatten(student_graph[1])
    teacher_outputs = keras.tree.flatten(teacher_graph[1])
    if len(student_outputs) != len(teacher_outputs):
        return None
    pairs = dict(zip(map(id, student_outputs), teacher_outputs, strict=True))
    # Consumers before producers: a node's depth exceeds its consumers'.
    nodes_by_depth = student_graph[2]
    for depth in sorted(nodes_by_depth):
        for node in nodes_by_depth[depth]:
            paired = [t for t in node.output_tensors if id(t) in pairs]
            if not paired:
                return None
            student_node, index = _keras_compat.producing_node(paired[0])
            teacher_node, teacher_index = _keras_compat.producing_node(
                pairs[id(paired[0])]
            )
            operation = teacher_node.operation
            tensors = [*node.output_tensors, *node.input_tensors]
            teacher_tensors = [
                *teacher_node.output_tensors,
                *teacher_node.input_tensors,
            ]
            if (
                student_node is not node
                or index != teacher_index
                or type(operation) is not type(node.operation)
                or operation.name != node.operation.name
                or len(tensors) != len(teacher_tensors)
            ):
                return None
            for tensor, teacher_tensor in zip(
                tensors, teacher_tensors, strict=True
            ):
                if pairs.setdefault(id(tensor), teacher_tensor) is not (
                    teacher_tensor
                ):
                    return None
    return pairs


def _prefix_tensors(student_graph, pairs):
    """The `id`s of the student tensors the prefix computes (the model's
    inputs among them), or `None` where it holds no layer."""
    inputs, _, nodes_by_depth = student_graph
    prefix = {id(t) for t in keras.tree.flatten(inputs)}
    layers = 0
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.is_input or not all(
                id(t) in prefix for t in node.input_tensors
            ):
                continue
            teacher_node, _ = _keras_compat.producing_node(
                pairs[id(node.output_tensors[0])]
            )
            if _shareable(node.operation, teacher_node.operation):
                prefix.update(id(t) for t in node.output_tensors)
                layers += 1
    return prefix if layers else None


def _frontier(student_graph, prefix):
    """The prefix tensors that layers outside the prefix read."""
    frontier = {}
    for nodes in student_graph[2].values():
        for node in nodes:
            if any(id(t) in prefix for t in node.output_tensors):
                continue
            for tensor in node.input_tensors:
                if id(tensor) in prefix:
                    frontier.setdefault(id(tensor), tensor)
    return list(frontier.values())


def _shareable(layer, teacher_layer):
    """Whether `layer` computes, in training, what `teacher_layer` does."""
    if not isinstance(layer, keras.layers.Layer):
        return False
    weights = [id(w) for w in layer.weights]
    return (
        not layer.trainable_weights
        and weights == [id(w) for w in teacher_layer.weights]
        and all(map(_deterministic, _keras_compat.all_layers(layer)))
    )


def _deterministic(layer):
    """Whether `layer`'s own computation ignores training mode and
    randomness, and adds no activity loss."""
    if getattr(layer, "activity_regularizer", None) is not None:
        return False
    if isinstance(layer, keras.layers.BatchNormalization):
        return not layer.trainable
    # Another library's layer may read `training` in ways not seen here;
    # its nested Functional models are checked layer by layer instead.
    return not _keras_compat.is_random_or_training_dependent(layer)
