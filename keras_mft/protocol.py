"""The paper's training protocol and its baselines, as functions.

Every arm trains on the same `(x, y, sample_weight)` data (see
`instruction_dataset`) with the paper's optimiser: AdamW, weight decay 0,
linear warm-up over 3% of the steps, then linear decay. Each function changes
the model in place and returns the Keras `History` (or the model, for the
untrained masks).

| arm                         | call                                              |
|-----------------------------|---------------------------------------------------|
| full fine-tuning (FFT)      | `full_fine_tune(model, data)`                     |
| MFT                         | `mask_fine_tune(model, data, layers=...)`         |
| continued FFT               | `full_fine_tune(model, data)` for MFT's steps     |
| random mask, untrained      | `untrained_mask(model, "random", layers=...)`     |
| L1-magnitude mask           | `untrained_mask(model, "magnitude", layers=...)`  |
| LoRA                        | `lora_fine_tune(model, data, rank=64, alpha=16)`  |
"""

import math

import keras

from keras_mft import architectures
from keras_mft.bake import bake
from keras_mft.schedules import LinearWarmupDecay
from keras_mft.wrap import LEARNING_RATE
from keras_mft.wrap import parse_targets
from keras_mft.wrap import wrap


def paper_optimizer(total_steps, learning_rate=LEARNING_RATE, warmup_fraction=0.03):
    """AdamW with weight decay 0 and `LinearWarmupDecay`."""
    schedule = LinearWarmupDecay(learning_rate, total_steps, warmup_fraction)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.0)


def _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose):
    x, y, sample_weight = data
    steps = math.ceil(len(y) / batch_size) * epochs
    model.compile(
        optimizer=paper_optimizer(steps, learning_rate), sampler=model.sampler
    )
    return model.fit(
        x, y, sample_weight=sample_weight, batch_size=batch_size, epochs=epochs,
        callbacks=callbacks, verbose=verbose,
    )


def full_fine_tune(
    model, data, *, epochs=2, batch_size=8, learning_rate=LEARNING_RATE,
    callbacks=None, verbose="auto",
):
    """Trains every weight of a `CausalLM` (the FFT arm, and continued FFT)."""
    for layer in model._flatten_layers():
        layer.trainable = True
    return _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose)


def mask_fine_tune(
    model, data, *, layers=None, targets=None, sparsity=0.1, score_init="random",
    seed=None, epochs=2, batch_size=8, learning_rate=LEARNING_RATE,
    callbacks=None, verbose="auto", bake_after=True,
):
    """Wraps, learns the masks, and (by default) bakes: the MFT arm.

    `layers`, `targets`, `sparsity`, `score_init` and `seed` are passed to
    `keras_mft.wrap`.
    """
    wrap(model, layers=layers, targets=targets, sparsity=sparsity,
         score_init=score_init, seed=seed)
    history = _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose)
    if bake_after:
        bake(model)
    return history


def untrained_mask(model, score_init, *, layers=None, targets=None, sparsity=0.1, seed=None):
    """Applies a mask that is not trained: `"random"` or `"magnitude"` (L1)."""
    wrap(model, layers=layers, targets=targets, sparsity=sparsity,
         score_init=score_init, seed=seed)
    return bake(model)


def lora_fine_tune(
    model, data, *, rank=64, alpha=16, targets=("q", "v"), epochs=2,
    batch_size=8, learning_rate=LEARNING_RATE, callbacks=None, verbose="auto",
):
    """LoRA through KerasHub's `enable_lora` on every decoder block.

    Args:
        rank: LoRA's rank; the paper compares with 64.
        alpha: LoRA's scale numerator (the update is `alpha / rank * A @ B`);
            the paper uses 16.
        targets: projections to adapt, as for `keras_mft.wrap`; KerasHub's
            default is query and value.
    """
    backbone = architectures.backbone_of(model)
    layer_names = architectures.layer_names_of(backbone)
    names = [layer_names[alias] for alias in parse_targets(list(targets), layer_names)]
    backbone.enable_lora(rank, target_layer_names=names)
    for layer in backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_alpha = alpha
    return _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose)
