"""keras-sft: fine-tune pretrained Keras models without forgetting."""

from keras_sft.sft_model import SFTModel
from keras_sft.teacher import clone_teacher
from keras_sft.teacher_cache import cache_teacher_outputs

__version__ = "0.1.0"

__all__ = ["SFTModel", "cache_teacher_outputs", "clone_teacher"]
