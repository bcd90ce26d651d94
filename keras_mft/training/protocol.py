"""The paper's arms and baselines, as functions.

Every trained arm is one `keras_mft.train` run on the same `(x, y,
sample_weight)` data (see `instruction_dataset`), with the paper's optimiser
and loss and the same seeded order of batches; keyword arguments go to
`train` (`epochs`, `batch_size`, `learning_rate`, `seed`, `callbacks`, ...).
MFT's learning rate comes from a score budget (`keras_mft.score_budget`), by
default B = 0.47 (the paper's math run). Each function changes the model in
place and returns `train`'s result (or the model, for the untrained masks).

| arm                         | call                                              |
|-----------------------------|---------------------------------------------------|
| full fine-tuning (FFT)      | `full_fine_tune(model, data)`                     |
| MFT                         | `mask_fine_tune(model, data, MaskConfig(...))`    |
| continued FFT               | `full_fine_tune(model, data)` for MFT's steps     |
| random mask, untrained      | `untrained_mask(model, MaskConfig(...))`          |
| L1-magnitude mask           | `untrained_mask(model, MaskConfig(score_init="magnitude"))` |
| LoRA                        | `lora_fine_tune(model, data, rank=64, alpha=16)`  |
"""

from keras_mft.masking import architectures
from keras_mft.masking.config import target_aliases
from keras_mft.masking.wrapping import bake
from keras_mft.masking.wrapping import wrap
from keras_mft.training import score_budget as budgets
from keras_mft.training.run import train


def full_fine_tune(model, data, **kwargs):
    """Trains every weight of a `CausalLM` (the FFT arm, and continued FFT)."""
    for layer in model._flatten_layers():
        layer.trainable = True
    return train(model, data, **kwargs)


def mask_fine_tune(model, data, config=None, *, bake_after=True, **kwargs):
    """Wraps with `config` (a `MaskConfig`), learns the masks and, by default, bakes: the MFT arm."""
    # Before `wrap` changes the model.
    budgets.check_rate_arguments(kwargs.get("score_budget"), kwargs.get("learning_rate"))
    wrap(model, config)
    result = train(model, data, **kwargs)
    if bake_after:
        bake(model)
    return result


def untrained_mask(model, config=None):
    """Applies a mask that is not trained: its `score_init` says which, random or L1."""
    return bake(wrap(model, config))


def lora_fine_tune(model, data, *, rank=64, alpha=16, targets=("q", "v"), **kwargs):
    """LoRA through KerasHub's `enable_lora` on every decoder block.

    Args:
        rank: LoRA's rank; the paper compares with 64.
        alpha: the update is `alpha / rank * A @ B`; the paper uses 16.
        targets: projections to adapt, as for `keras_mft.MaskConfig`.
    """
    backbone = architectures.backbone_of(model)
    layer_names = architectures.layer_names_of(backbone)
    names = [layer_names[alias] for alias in target_aliases(list(targets), layer_names)]
    backbone.enable_lora(rank, target_layer_names=names)
    for layer in backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_alpha = alpha
    return train(model, data, **kwargs)
