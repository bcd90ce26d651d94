"""keras-mft: Mask Fine-Tuning for KerasHub language models."""

from keras_mft import evaluation
from keras_mft import plot
from keras_mft import protocol
from keras_mft import score_budget
from keras_mft.backup import CrashSafeBackupAndRestore
from keras_mft.distribution import extend_layout_map
from keras_mft.embedded.gsm8k import gsm8k
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.embedded.smollm2 import tiny_smollm2
from keras_mft.hf_export import export_to_transformers
from keras_mft.instruction_data import instruction_dataset
from keras_mft.instruction_data import read_jsonl
from keras_mft.mask_file import apply_masks
from keras_mft.mask_file import describe_masks
from keras_mft.mask_file import load_masks
from keras_mft.mask_file import save_masks
from keras_mft.mask_fine_tuner import MaskFineTuner
from keras_mft.masked_layers import MaskedDense
from keras_mft.masked_layers import MaskedEinsumDense
from keras_mft.named_masks import mask_names
from keras_mft.named_masks import use_masks
from keras_mft.preset import save_preset
from keras_mft.schedules import LinearWarmupDecay
from keras_mft.training import PaperAdamW
from keras_mft.training import paper_loss
from keras_mft.version import __version__
from keras_mft.wrapping import bake
from keras_mft.wrapping import masks_of
from keras_mft.wrapping import scores_of
from keras_mft.wrapping import wrap

__all__ = [
    "CrashSafeBackupAndRestore",
    "LinearWarmupDecay",
    "MaskFineTuner",
    "MaskedDense",
    "MaskedEinsumDense",
    "PaperAdamW",
    "__version__",
    "apply_masks",
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
    "use_masks",
    "wrap",
]
