"""keras-mft: Mask Fine-Tuning for KerasHub language models."""

from keras_mft import evaluation
from keras_mft import plot
from keras_mft.data.instruction_data import instruction_dataset
from keras_mft.data.instruction_data import read_jsonl
from keras_mft.embedded.gsm8k import gsm8k
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.embedded.smollm2 import tiny_smollm2
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.layers import MaskedDense
from keras_mft.masking.layers import MaskedEinsumDense
from keras_mft.masking.named_masks import mask_names
from keras_mft.masking.named_masks import use_masks
from keras_mft.masking.wrapping import bake
from keras_mft.masking.wrapping import masks_of
from keras_mft.masking.wrapping import scores_of
from keras_mft.masking.wrapping import wrap
from keras_mft.saving.mask_file import describe_masks
from keras_mft.saving.mask_file import load_masks
from keras_mft.saving.mask_file import save_masks
from keras_mft.saving.preset import save_preset
from keras_mft.saving.transformers import export_to_transformers
from keras_mft.training import protocol
from keras_mft.training import score_budget
from keras_mft.training.backup import CrashSafeBackupAndRestore
from keras_mft.training.distribution import extend_layout_map
from keras_mft.training.mask_fine_tuner import MaskFineTuner
from keras_mft.training.optimizer import PaperAdamW
from keras_mft.training.optimizer import paper_loss
from keras_mft.training.run import train
from keras_mft.training.schedule import LinearWarmupDecay
from keras_mft.version import __version__

__all__ = [
    "CrashSafeBackupAndRestore",
    "LinearWarmupDecay",
    "MaskConfig",
    "MaskFineTuner",
    "MaskedDense",
    "MaskedEinsumDense",
    "PaperAdamW",
    "__version__",
    "bake",
    "describe_masks",
    "evaluation",
    "export_to_transformers",
    "extend_layout_map",
    "gsm8k",
    "instruction_dataset",
    "load_masks",
    "mask_names",
    "masks_of",
    "paper_loss",
    "plot",
    "protocol",
    "read_jsonl",
    "save_masks",
    "save_preset",
    "score_budget",
    "scores_of",
    "smollm2_135m_instruct",
    "tiny_smollm2",
    "train",
    "use_masks",
    "wrap",
]
