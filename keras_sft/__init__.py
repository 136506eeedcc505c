"""keras-sft: fine-tune pretrained Keras models without forgetting."""

from keras_sft.export import export_saved_model
from keras_sft.sft_model import SFTModel
from keras_sft.teacher import clone_teacher

__version__ = "0.1.0"

__all__ = ["SFTModel", "clone_teacher", "export_saved_model"]
