"""The settings that every training run of the examples shares."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How to train: epochs, batches, optimizer, seed and side outputs.

    One value travels from the flags (`common_flags.training_config`) or a
    test to the experiment that trains, instead of a dozen arguments.

    Example:

    ```python
    config = TrainingConfig(epochs=80, verbose=0)
    shorter = dataclasses.replace(config, epochs=1)
    ```

    Args:
        epochs: Int, the number of epochs. Defaults to `10`.
        batch_size: Int, the global batch size. Defaults to `32`.
        learning_rate: Float, Adam's learning rate. Defaults to `1e-3`.
        seed: Int, the seed of the weights, of Keras's randomness and of
            the shuffling. Defaults to `0`.
        jit_compile: Bool or `"auto"`, as in `keras.Model.compile`.
            Defaults to `False`.
        log_dir: String, the TensorBoard log directory, or `None`. Defaults
            to `None`.
        checkpoint_dir: String, where `ModelCheckpoint` writes the model
            after each epoch, or `None`. Defaults to `None`.
        backup_dir: String, the `BackupAndRestore` directory of a
            fine-tuning, or `None`. Defaults to `None`.
        backup_freq: `"epoch"` or an int > 0, how often the backup is
            written (`keras_sft.BackupAndRestore`'s `save_freq`). Defaults
            to `"epoch"`.
        verbose: As in `keras.Model.fit`. Defaults to `"auto"`.
        distance: String, SFT's consistency distance (`SFTModel`'s
            `distance`). Defaults to `"mse"`, with which the examples'
            tables were measured.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    jit_compile: bool | str = False
    log_dir: str | None = None
    checkpoint_dir: str | None = None
    backup_dir: str | None = None
    backup_freq: int | str = "epoch"
    verbose: int | str = "auto"
    distance: str = "mse"
