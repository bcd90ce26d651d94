"""keras-mft: Mask Fine-Tuning for KerasHub language models."""

from keras_mft.bake import bake
from keras_mft import evaluation
from keras_mft import protocol
from keras_mft.instruction_data import instruction_dataset
from keras_mft.instruction_data import read_jsonl
from keras_mft.mask_file import load_masks
from keras_mft.mask_file import save_masks
from keras_mft.mask_fine_tuner import MaskFineTuner
from keras_mft.masked_layers import MaskedDense
from keras_mft.masked_layers import MaskedEinsumDense
from keras_mft.schedules import LinearWarmupDecay
from keras_mft.smollm2 import smollm2_135m_instruct
from keras_mft.version import __version__
from keras_mft.wrap import wrap

__all__ = [
    "LinearWarmupDecay",
    "MaskFineTuner",
    "MaskedDense",
    "MaskedEinsumDense",
    "__version__",
    "bake",
    "evaluation",
    "instruction_dataset",
    "load_masks",
    "protocol",
    "read_jsonl",
    "save_masks",
    "smollm2_135m_instruct",
    "wrap",
]
