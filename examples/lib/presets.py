"""The defaults each experiment binary starts from, in one visible place.

Each preset maps flag names to the defaults that binary gives them; the
binary applies it before parsing (`common_flags.run(main, preset=...)`),
so `--help` shows the defaults a run really uses, and tests can read them.
"""

# The forgetting demo: fine-tune on the negatives of classes 0-4, long
# enough for plain fine-tuning to fit them, bit-identical from run to run
# (the tables in the README).
DEMO = {
    "classes": ["0-4"],
    "shift": "invert",
    "epochs": 80,
    "pretrain_epochs": 30,
    "lambdas": ["0.01", "0.03", "0.1", "0.3", "1"],
    "deterministic": True,
}

# Segmentation: a small FCN on digit scenes; it needs a larger step.
SEGMENTATION = {
    "epochs": 10,
    "pretrain_epochs": 20,
    "learning_rate": 3e-3,
    "lambdas": ["0.03", "0.1", "0.3"],
    "l2_sp_alphas": ["0.001", "0.01", "0.1"],
    "anchor_lambdas": ["0.3"],
}

# A keras-hub task: token-level SFT compares distributions over the
# vocabulary, so KL (Learning without Forgetting's distance).
HUB = {"distance": "kl", "lambda": 0.5}

# Lambda selection on the demo's data: its pretrained model saw the first
# half of the digits' train split; the second half gives the fine-tuning
# data (classes 0-4, inverted).
SELECT_LAMBDA = {
    "train_split": "train[50%:]",
    "classes": ["0-4"],
    "retained_split": "train[50%:]",
    "retained_classes": ["5-9"],
    "shift": "invert",
    "epochs": 80,
}

# Detection: a grid detector on 32x32 digit scenes, fine-tuned to their
# negatives; a larger step and batch keep the run to a few minutes.
DETECTION = {
    "epochs": 10,
    "pretrain_epochs": 15,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "lambdas": ["0.1", "1"],
    "anchor_lambdas": ["0.1", "1"],
    "l2_sp_alphas": ["0.01"],
    "anchor_count": 500,
    "image_size": 32,
}

# The forgetting benchmark: as the demo, long enough for plain fine-tuning
# to fit the new data (`benchmarks.experiments.forgetting_benchmark.TRAINING`).
FORGETTING_BENCHMARK = {
    "output_dir": "runs/forgetting",
    "epochs": 80,
    "pretrain_epochs": 30,
}
