"""One worker of the two-process `MultiWorkerMirroredStrategy` test.

Run by `tests/test_multi_worker.py` as `python -m tests.multi_worker_worker
OUTPUT DIRECTORY` with `TF_CONFIG` set; trains `SFTModel` for one epoch on
the shared global batches and writes the student's weights and the epoch
logs to `OUTPUT` (a `.npz` file), then runs each of
`multi_worker_case.CASES` and writes its arrays to `OUTPUT` with the
case's name and `.npz` appended (`DIRECTORY`, shared by the workers, holds
the files a case writes).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from keras_sft.strategy import build_strategy  # noqa: E402
from tests import multi_worker_case  # noqa: E402


def main(argv):
    output, directory = argv[1:]
    strategy = build_strategy("multi_worker", collective_timeout=120.0)
    weights, logs = multi_worker_case.train(strategy)
    np.savez(output, *weights, **{f"log_{k}": v for k, v in logs.items()})
    for case in multi_worker_case.CASES:
        arrays = getattr(multi_worker_case, case)(strategy, directory)
        np.savez(f"{output}.{case}.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv)
