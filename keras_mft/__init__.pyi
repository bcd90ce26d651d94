"""The public names of `keras_mft`, imported when first used (`__init__.py`).

Each is written `name as name`: a re-export, for type checkers (PEP 484).
"""

from . import evaluation as evaluation
from . import plot as plot
from .data.instruction_data import instruction_dataset as instruction_dataset
from .data.instruction_data import read_jsonl as read_jsonl
from .embedded.gsm8k import gsm8k as gsm8k
from .embedded.smollm2 import smollm2_135m_instruct as smollm2_135m_instruct
from .embedded.smollm2 import tiny_smollm2 as tiny_smollm2
from .masking.config import MaskConfig as MaskConfig
from .masking.layers import MaskedDense as MaskedDense
from .masking.layers import MaskedEinsumDense as MaskedEinsumDense
from .masking.named_masks import mask_names as mask_names
from .masking.named_masks import use_masks as use_masks
from .masking.wrapping import bake as bake
from .masking.wrapping import masks_of as masks_of
from .masking.wrapping import scores_of as scores_of
from .masking.wrapping import wrap as wrap
from .saving.gguf import export_to_gguf as export_to_gguf
from .saving.mask_file import describe_masks as describe_masks
from .saving.mask_file import load_masks as load_masks
from .saving.mask_file import save_masks as save_masks
from .saving.preset import load_preset as load_preset
from .saving.preset import save_preset as save_preset
from .saving.transformers import export_to_transformers as export_to_transformers
from .training import protocol as protocol
from .training import score_budget as score_budget
from .training.backup import CrashSafeBackupAndRestore as CrashSafeBackupAndRestore
from .training.checkpointing import gradient_checkpointing as gradient_checkpointing
from .training.distribution import extend_layout_map as extend_layout_map
from .training.mask_fine_tuner import MaskFineTuner as MaskFineTuner
from .training.optimizer import PaperAdamW as PaperAdamW
from .training.optimizer import paper_loss as paper_loss
from .training.run import train as train
from .training.schedule import LinearWarmupDecay as LinearWarmupDecay
from .version import __version__ as __version__
