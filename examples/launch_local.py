r"""Runs a binary on several workers of one machine, as a multi-worker job.

    python -m examples.launch_local --workers=2 -- \
        --pretrained=runs/pretrained.keras --output=runs/finetuned.keras \
        --backup_dir=runs/backup

Starts `--workers` processes of `python -m examples.BINARY
--strategy=multi_worker`, each with the flags after `--` and the
`TF_CONFIG` of its task (free ports on 127.0.0.1, worker 0 the chief),
prefixes each line of their output with its worker, forwards Ctrl-C and
SIGTERM, and exits with the first failing worker's status (the others are
stopped). For trying a job out on one machine; on a cluster the cluster
manager starts the workers (docs/cluster.md).
"""

from absl import app
from absl import flags

from examples.lib import local_cluster

WORKERS = flags.DEFINE_integer(
    "workers",
    2,
    "Number of worker processes (worker 0 is the chief).",
    lower_bound=1,
    upper_bound=64,
)
BINARY = flags.DEFINE_enum(
    "binary",
    "finetune",
    ["pretrain", "finetune"],
    "The binary every worker runs, examples.BINARY.",
)


def main(argv):
    try:
        command = local_cluster.binary_command(BINARY.value, argv[1:])
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    return local_cluster.launch(command, WORKERS.value)


if __name__ == "__main__":
    app.run(main)
