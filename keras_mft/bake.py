"""`bake`: multiply the learned masks into the kernels and drop the scores."""

import keras
import keras_hub

from keras_mft.masked_layers import allow_quantize
from keras_mft.masked_layers import is_masked
from keras_mft.masked_layers import unmask_layers


def masked_layers_of(model):
    """The masked layers of `model`, in model order; raises if there are none."""
    layers = [layer for layer in model._flatten_layers() if is_masked(layer)]
    if not layers:
        raise ValueError(
            "This model has no masks: call `keras_mft.wrap(model)` first."
        )
    return layers


def masks_of(model):
    """The current hard masks of a wrapped model, as numpy arrays.

    Returns:
        `{kernel path: mask}`, each mask a boolean array of the kernel's
        shape, True where the weight is kept.
    """
    return {
        layer._kernel.path: keras.ops.convert_to_numpy(layer._keep())
        for layer in masked_layers_of(model)
    }


def scores_of(model):
    """The current scores of a wrapped model, as numpy arrays.

    Returns:
        `{kernel path: scores}`, each a float32 array of the kernel's shape.
    """
    return {
        layer._kernel.path: keras.ops.convert_to_numpy(layer.scores)
        for layer in masked_layers_of(model)
    }


def bake(model):
    """Makes a wrapped model a plain KerasHub model again, in place.

    Each masked kernel is multiplied by its current hard mask (exactly 0 or 1),
    the scores are dropped and the layers become plain `keras.layers.Dense` /
    `keras.layers.EinsumDense`. As in a freshly loaded KerasHub model, every
    weight is trainable again (with LoRA enabled: as after KerasHub's
    `enable_lora`, only the LoRA layers' factors and biases, and each kernel
    keeps LoRA's delta on top of its baked mask), and a `CausalLM` is recompiled with KerasHub's
    defaults (its sampler kept). The result saves with `save_to_preset` and
    loads with KerasHub alone, without keras-mft.

    Args:
        model: a model returned by `keras_mft.wrap`.

    Returns:
        The same model object.
    """
    unmask_layers(masked_layers_of(model))
    for layer in model._flatten_layers():
        if hasattr(layer, "_plain_quantize"):  # the model and backbone that `wrap` changed
            allow_quantize(layer)
    # Layer by layer: on TensorFlow, `model.trainable = True` does not reach
    # every sublayer that `wrap` froze.
    for layer in model._flatten_layers():
        layer.trainable = True
    lora_layers = [l for l in model._flatten_layers() if getattr(l, "lora_enabled", False)]
    if lora_layers:  # as after KerasHub's `enable_lora`: only LoRA trains
        for layer in model._flatten_layers(include_self=False):
            layer.trainable = False
        for layer in lora_layers:
            layer.trainable = True
            layer._kernel.trainable = False
    if isinstance(model, keras_hub.models.CausalLM):
        model.compile(sampler=model.sampler)
    return model
