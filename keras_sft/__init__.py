"""keras-sft: fine-tune pretrained Keras models without forgetting."""

from keras_sft.adaptive_lambda import AdaptiveLambda
from keras_sft.backup_and_restore import BackupAndRestore
from keras_sft.data_checks import check_dataset
from keras_sft.epoch_shuffle import EpochShuffle
from keras_sft.export import export_saved_model
from keras_sft.forgetting_monitor import ForgettingMonitor
from keras_sft.l2_sp import apply_l2_sp
from keras_sft.l2_sp import remove_l2_sp
from keras_sft.new_head import add_head
from keras_sft.select_lambda import select_lambda
from keras_sft.sft_model import SFTModel
from keras_sft.teacher import clone_teacher
from keras_sft.teacher_cache import cache_teacher_outputs
from keras_sft.terminate_on_nan import NonFiniteLossError
from keras_sft.terminate_on_nan import TerminateOnNaN
from keras_sft.wise_ft import wise_ft

__version__ = "0.1.0"

__all__ = [
    "AdaptiveLambda",
    "BackupAndRestore",
    "EpochShuffle",
    "ForgettingMonitor",
    "NonFiniteLossError",
    "SFTModel",
    "TerminateOnNaN",
    "add_head",
    "apply_l2_sp",
    "cache_teacher_outputs",
    "check_dataset",
    "clone_teacher",
    "export_saved_model",
    "remove_l2_sp",
    "select_lambda",
    "wise_ft",
]
