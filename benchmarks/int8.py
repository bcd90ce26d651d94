"""Masks and Keras' int8 quantization: why keras-mft bakes first, then quantizes.

Keras' int8 `Dense` / `EinsumDense` store each kernel as int8 values and one
scale per output channel, the channel's largest |weight| / 127. A mask can
meet an int8 model two ways:

- bake, then quantize (what keras-mft supports): the masked float kernel is
  quantized, so each channel's scale is its largest *kept* |weight|;
- quantize, then mask: zero the int8 values of the removed weights and keep
  the scales of the unmasked kernel.

The two give the same int8 model only in the channels whose largest |weight|
is kept. This script measures, on the embedded SmolLM2-135M-Instruct with
masks on blocks 4-7 at 10%, how many scales differ between the two routes
and how far their logits are apart, next to the error of int8 itself (the
baked float model against the baked-then-quantized one). A random mask (what
MFT starts from, and close to what it learns at 10%) removes the largest
weight of about one channel in ten; the L1-magnitude mask never does.

    KERAS_BACKEND=jax python benchmarks/int8.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

import keras_mft
from keras_mft.masking.mask import zero_removed

LAYERS, SPARSITY = "4:8", 0.1


def load():
    model = keras_mft.smollm2_135m_instruct()
    model.preprocessor = None
    return model


def logits(model, batch):
    return keras.ops.convert_to_numpy(keras.ops.cast(model(batch), "float32"))


def kernels_of(model, paths):
    """{kernel path: layer} of the layers whose kernel is in `paths`."""
    return {
        layer._kernel.path: layer
        for layer in model._flatten_layers()
        if getattr(layer, "_kernel", None) is not None and layer._kernel.path in paths
    }


def routes(load, layers, score_init, batch):
    """The logits and scales of both routes, and the baked float logits.

    Args:
        load: returns a fresh float model, without a preprocessor.
        layers: the masked blocks.
        score_init: `"random"` or `"magnitude"`, as for `keras_mft.wrap`.
        batch: the model's inputs.

    Returns:
        `(float logits, bake-then-quantize logits, quantize-then-mask logits,
        [(scales that differ, scales)] per masked kernel, masked kernels)`.
    """
    wrapped = keras_mft.wrap(
        load(), layers=layers, sparsity=SPARSITY, score_init=score_init, seed=0
    )
    masks = keras_mft.masks_of(wrapped)
    baked = keras_mft.bake(wrapped)
    float_logits = logits(baked, batch)
    baked.backbone.quantize("int8")
    masked_int8 = load()
    masked_int8.backbone.quantize("int8")
    # After quantize, `_kernel` holds the int8 values under the same path.
    for path, layer in kernels_of(masked_int8, masks).items():
        layer._kernel.assign(zero_removed(layer._kernel.value, masks[path]))
    baked_layers, masked_layers = kernels_of(baked, masks), kernels_of(masked_int8, masks)
    differ = []
    for path, layer in baked_layers.items():
        first = keras.ops.convert_to_numpy(layer.kernel_scale)
        after = keras.ops.convert_to_numpy(masked_layers[path].kernel_scale)
        differ.append((int(np.sum(first != after)), first.size))
    return float_logits, logits(baked, batch), logits(masked_int8, batch), differ, len(masks)


def gap(a, b):
    difference = np.abs(a - b)
    return f"{difference.mean():.4f} ({difference.max():.2f})"


def main():
    rng = np.random.default_rng(0)
    batch = {
        "token_ids": rng.integers(17, 49152, (2, 64)).astype("int32"),
        "padding_mask": np.ones((2, 64), bool),
    }
    print(
        f"SmolLM2-135M-Instruct, blocks {LAYERS}, {SPARSITY:.0%} removed, {keras.backend.backend()}"
    )
    print(
        "| mask | scales that differ | logit gap of the routes, mean (max) | logit error of int8, mean (max) |"
    )
    print("|---|---:|---:|---:|")
    for name, score_init in (("random (MFT's start)", "random"), ("L1 magnitude", "magnitude")):
        float_logits, bake_first, mask_after, differ, kernels = routes(
            load, LAYERS, score_init, batch
        )
        assert len(differ) == kernels, "every masked kernel is quantized"
        changed, total = sum(d for d, _ in differ), sum(n for _, n in differ)
        print(
            f"| {name} | {changed:,} of {total:,} ({changed / total:.1%}) | "
            f"{gap(bake_first, mask_after)} | {gap(bake_first, float_logits)} |"
        )


if __name__ == "__main__":
    main()
