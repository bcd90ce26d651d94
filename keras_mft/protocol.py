"""The paper's training protocol and its baselines, as functions.

Every arm trains on the same `(x, y, sample_weight)` data (see
`instruction_dataset`) with the paper's optimiser (`paper_optimizer`) and loss
(`paper_loss`). Each function changes the model in place and returns the
Keras `History` (or the model, for the untrained masks). MFT's learning rate
comes from a score budget (`keras_mft.score_budget`), by default B = 0.47 (the
paper's math run), or is given as `learning_rate`.

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
import os
import warnings

from keras_mft import architectures
from keras_mft import plot
from keras_mft import score_budget as budgets
from keras_mft.mask_file import save_masks
from keras_mft.mask_fine_tuner import MaskFineTuner
from keras_mft.training import LEARNING_RATE
from keras_mft.training import compile_like_paper
from keras_mft.training import paper_optimizer
from keras_mft.wrapping import bake
from keras_mft.wrapping import masks_of
from keras_mft.wrapping import parse_targets
from keras_mft.wrapping import wrap

__all__ = [
    "compile_mask_fine_tuning",
    "full_fine_tune",
    "lora_fine_tune",
    "mask_fine_tune",
    "save_mask_fine_tuning",
    "paper_optimizer",
    "total_steps",
    "untrained_mask",
]


def total_steps(data, batch_size, epochs):
    """The number of optimizer steps that `model.fit` takes on `data`."""
    return math.ceil(len(data[1]) / batch_size) * epochs


def compile_mask_fine_tuning(
    model, steps, score_budget=None, learning_rate=None, gradient_accumulation_steps=None
):
    """Compiles a wrapped `CausalLM` for `steps` steps of MFT, as the paper does.

    The peak learning rate spends `score_budget` (default 0.47) in `steps`
    steps, against the std of the scores now (call it right after `wrap`);
    or it is `learning_rate`.

    With `gradient_accumulation_steps`, each update averages the gradients
    of that many of the `steps` batches; the schedule and the budget then
    count updates, as Hugging Face's do.

    Returns:
        `(learning_rate, budget)`: the peak learning rate and the run's B.
    """
    accumulation = gradient_accumulation_steps or 1
    updates = steps // accumulation
    if updates < 1:
        raise ValueError(
            f"{steps} batches make no update at gradient_accumulation_steps="
            f"{gradient_accumulation_steps}: train on more data or accumulate fewer batches."
        )
    if steps % accumulation:
        warnings.warn(
            f"The last {steps % accumulation} of the {steps} batches make no update: "
            f"{steps} is not a multiple of gradient_accumulation_steps={accumulation}.",
            stacklevel=2,
        )
    learning_rate, budget = budgets.peak_learning_rate(
        updates, budgets.score_std(model), score_budget, learning_rate
    )
    optimizer = paper_optimizer(
        updates, learning_rate, gradient_accumulation_steps=gradient_accumulation_steps
    )
    compile_like_paper(model, optimizer)
    return learning_rate, budget


def save_mask_fine_tuning(model, out_dir, initial_masks, step_losses):
    """Writes `masks.mask`, `training_curve.png` and `mask_change.png` in `out_dir`.

    `step_losses` has one loss per step; `initial_masks` is `masks_of(model)`
    taken before training.

    Returns:
        `{"masks": path, "training curve": path, "mask change": path}`.
    """
    paths = {
        "masks": os.path.join(out_dir, "masks.mask"),
        "training curve": os.path.join(out_dir, "training_curve.png"),
        "mask change": os.path.join(out_dir, "mask_change.png"),
    }
    save_masks(model, paths["masks"])
    plot.training_curve(step_losses, paths["training curve"])
    plot.mask_change(initial_masks, masks_of(model), paths["mask change"])
    return paths


def _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose):
    """Compiles with the paper's optimiser at `learning_rate`, then trains."""
    compile_like_paper(model, paper_optimizer(total_steps(data, batch_size, epochs), learning_rate))
    return _train(model, data, epochs, batch_size, callbacks, verbose)


def _train(model, data, epochs, batch_size, callbacks, verbose):
    x, y, sample_weight = data
    return model.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
    )


def full_fine_tune(
    model,
    data,
    *,
    epochs=2,
    batch_size=8,
    learning_rate=LEARNING_RATE,
    callbacks=None,
    verbose="auto",
):
    """Trains every weight of a `CausalLM` (the FFT arm, and continued FFT)."""
    budgets.check_rate_arguments(learning_rate=learning_rate)
    for layer in model._flatten_layers():
        layer.trainable = True
    return _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose)


def mask_fine_tune(
    model,
    data,
    *,
    layers=None,
    targets=None,
    sparsity=0.1,
    score_init="random",
    seed=None,
    epochs=2,
    batch_size=8,
    score_budget=None,
    learning_rate=None,
    callbacks=None,
    verbose="auto",
    bake_after=True,
):
    """Wraps, learns the masks, and (by default) bakes: the MFT arm.

    `layers`, `targets`, `sparsity`, `score_init` and `seed` go to `wrap`.

    Args:
        score_budget: the run's score budget B, which sets the peak learning
            rate. Defaults to 0.47 (the paper's math run).
        learning_rate: the peak learning rate, instead of `score_budget`.
    """
    budgets.check_rate_arguments(score_budget, learning_rate)  # before `wrap` changes the model
    wrap(model, layers=layers, targets=targets, sparsity=sparsity, score_init=score_init, seed=seed)
    _, budget = compile_mask_fine_tuning(
        model, total_steps(data, batch_size, epochs), score_budget, learning_rate
    )
    if not any(isinstance(callback, MaskFineTuner) for callback in callbacks or ()):
        budgets.warn_if_small(budget)  # A MaskFineTuner warns by itself.
    history = _train(model, data, epochs, batch_size, callbacks, verbose)
    if bake_after:
        bake(model)
    return history


def untrained_mask(model, score_init, *, layers=None, targets=None, sparsity=0.1, seed=None):
    """Applies a mask that is not trained: `"random"` or `"magnitude"` (L1)."""
    wrap(model, layers=layers, targets=targets, sparsity=sparsity, score_init=score_init, seed=seed)
    return bake(model)


def lora_fine_tune(
    model,
    data,
    *,
    rank=64,
    alpha=16,
    targets=("q", "v"),
    epochs=2,
    batch_size=8,
    learning_rate=LEARNING_RATE,
    callbacks=None,
    verbose="auto",
):
    """LoRA through KerasHub's `enable_lora` on every decoder block.

    Args:
        rank: LoRA's rank; the paper compares with 64.
        alpha: the update is `alpha / rank * A @ B`; the paper uses 16.
        targets: projections to adapt, as for `keras_mft.wrap`.
    """
    budgets.check_rate_arguments(learning_rate=learning_rate)
    backbone = architectures.backbone_of(model)
    layer_names = architectures.layer_names_of(backbone)
    names = [layer_names[alias] for alias in parse_targets(list(targets), layer_names)]
    backbone.enable_lora(rank, target_layer_names=names)
    for layer in backbone._flatten_layers():
        if getattr(layer, "lora_enabled", False):
            layer.lora_alpha = alpha
    return _fit(model, data, epochs, batch_size, learning_rate, callbacks, verbose)
