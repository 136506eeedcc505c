"""The textbook PyTorch loop of SFT, timed for `benchmarks/throughput.py`.

The loop the issue measured keras-sft against: a frozen `deepcopy` of the
pretrained model as teacher, run under `torch.no_grad()` in `eval()` mode,
cross-entropy plus `lambda_` times MSE, `torch.optim.Adam`, and a
`DataLoader` that shuffles a `TensorDataset` into batches of 128. Same
synthetic arrays, same layer sizes, same batch as the Keras variants
(the CNN takes them channels-first, PyTorch's layout). `--variant=plain`
drops the teacher, for PyTorch's own ratio.

`throughput.py` starts this module with `--serve` and interleaves its
epochs with the Keras variants': after one untimed epoch, each line read
from stdin runs one epoch and answers with its seconds. Without
`--serve` it trains `--epochs` epochs, for the peak-memory process.

PyTorch is not a dependency of keras-sft; install the CPU build to run
this (`pip install torch==2.13.0` takes it from this machine's disk).

    python -m benchmarks.torch_loop --model=mlp --epochs=2
"""

import copy
import sys
import time

from absl import app
from absl import flags

from benchmarks import throughput

_MODEL = flags.DEFINE_enum("model", "mlp", list(throughput.MODELS), "Model.")
_VARIANT = flags.DEFINE_enum(
    "variant", "sft", ["sft", "plain"], "SFT with a teacher, or plain."
)
_SERVE = flags.DEFINE_bool(
    "serve", False, "Time one epoch per line read from stdin."
)
_EPOCHS = flags.DEFINE_integer(
    "epochs", 2, "Epochs to train without --serve.", lower_bound=1
)


def _build(model_name):
    """The PyTorch twin of `variants.build`."""
    from torch import nn

    if model_name == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(3, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 6 * 6, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def _trainer(model_name, variant, lambda_=0.5):
    """A function that trains one epoch of the textbook loop."""
    import torch
    from torch.nn import functional

    torch.manual_seed(0)
    x, y = throughput._arrays(model_name)
    x = torch.from_numpy(x)
    if model_name == "cnn":
        x = x.permute(0, 3, 1, 2).contiguous()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.from_numpy(y).long()),
        batch_size=throughput.BATCH_SIZE,
        shuffle=True,
    )
    student = _build(model_name)
    teacher = copy.deepcopy(student).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)

    def epoch():
        student.train()
        for inputs, labels in loader:
            optimizer.zero_grad()
            outputs = student(inputs)
            loss = functional.cross_entropy(outputs, labels)
            if variant == "sft":
                with torch.no_grad():
                    targets = teacher(inputs)
                loss = loss + lambda_ * functional.mse_loss(outputs, targets)
            loss.backward()
            optimizer.step()

    return epoch


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    epoch = _trainer(_MODEL.value, _VARIANT.value)
    epoch()  # Untimed, as the Keras variants' first epoch.
    if not _SERVE.value:
        for _ in range(_EPOCHS.value - 1):
            epoch()
        return
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        epoch()
        print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    app.run(main)
