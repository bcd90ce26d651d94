"""`wrap` puts learnable masks on a KerasHub causal LM; `bake` multiplies them in."""

import dataclasses
import zlib

import keras
import keras_hub
import numpy as np

from keras_mft.masking import architectures
from keras_mft.masking import selection as selections
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.layers import MAGNITUDE
from keras_mft.masking.layers import is_masked
from keras_mft.masking.layers import mask_layer
from keras_mft.masking.layers import quantize_error
from keras_mft.masking.layers import train_like_lora
from keras_mft.masking.layers import unmask
from keras_mft.training.optimizer import compile_like_paper


def wrap(model: keras.Model, config: MaskConfig | None = None, **kwargs) -> keras.Model:
    """Prepares a KerasHub causal LM for Mask Fine-Tuning, in place.

    Every weight is frozen, and the projections that `config` names become
    `MaskedDense` / `MaskedEinsumDense` layers whose float32 `scores` are
    the only trainable variables (with the LoRA factors, if `enable_lora`
    was called first: the kernel is then `kernel * mask` plus LoRA's delta).
    A `CausalLM` is recompiled with `PaperAdamW` at a constant 2e-5 and
    `paper_loss`, so `model.fit` works at once (`keras_mft.train` adds the
    paper's schedule and score budget). Until `bake`, the model and its
    backbone refuse `quantize` (Keras quantizes layer by layer, and a
    refusal at the first masked layer would come after the layers before it)
    and `save` and `save_to_preset` (a `.keras` file or a preset of a wrapped
    model does not load back: KerasHub rebuilds the model from its
    configuration, without the masks); `save_weights` works.

    Args:
        model: a KerasHub `CausalLM` or its backbone: Llama, Llama3, Mistral,
            Gemma, Gemma3, Qwen (2), Qwen3, Phi3 or GPT-2.
        config: a `keras_mft.MaskConfig`; or give its fields as keywords,
            `wrap(model, layers="20:24", sparsity=0.1)`. Defaults to
            `MaskConfig()`: blocks 0-3, every projection, 10% removed.

    Returns:
        The same model object, wrapped.

    Example:

    ```python
    # Or any KerasHub Llama: keras_hub.models.Llama3CausalLM.from_preset(...)
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="4:8", sparsity=0.1)
    [v.path for v in model.trainable_variables][:2]
    # ['transformer_layer_4/self_attention/query/scores', ...]
    model = keras_mft.bake(model)  # after training: a plain KerasHub model
    ```
    """
    if config is not None and kwargs:
        raise TypeError("Pass a `MaskConfig` or its fields as keywords, not both.")
    config = MaskConfig(**kwargs) if config is None else config
    if not isinstance(config, MaskConfig):
        raise TypeError(f"`config` must be a `keras_mft.MaskConfig`. Received: {config!r}")
    backbone = architectures.backbone_of(model)
    if is_wrapped(model):
        raise ValueError(
            "This model is already wrapped. Call `keras_mft.bake(model)` to "
            "finish the current masks, or wrap a freshly loaded model."
        )
    planned = config.plan(backbone)
    if config.seed is None:  # recorded, so that a mask file says where its scores began
        config = dataclasses.replace(config, seed=int(np.random.SeedSequence().entropy % 2**32))

    # Every check has passed: from here on the model is changed.
    model.trainable = True
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for _, layer, sparsity, selection in planned:
        magnitude = config.score_init == "magnitude"
        mask_layer(layer, sparsity, selection, MAGNITUDE if magnitude else None)
        layer.mask_config = config
        if not magnitude:
            layer.scores.assign(random_scores(layer, config.seed))
        if isinstance(selection, selections.Global):
            selection.layers.append(layer)
    for refusing in {id(model): model, id(backbone): backbone}.values():
        for method in REFUSED:
            setattr(refusing, method, _Refused(refusing.name, method))
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            _train_lora_and_scores(layer)
    if isinstance(model, keras_hub.models.CausalLM):
        compile_like_paper(model)
    return model


def save_error(name):
    return ValueError(
        f"'{name}' holds masks, and a .keras file or preset of it would not load back "
        "(KerasHub rebuilds a model from its configuration, without masks). Save the masks "
        "with `keras_mft.save_masks(model, path)`, the whole training state with "
        "`model.save_weights(path)`, or call `keras_mft.bake(model)` and save the baked model."
    )


# What a wrapped model and its backbone refuse until `bake`. The model's class
# is KerasHub's, and Keras has no hook by which a layer could refuse these for
# the model, so `wrap` sets them on the two objects and `bake` removes them.
REFUSED = {"quantize": quantize_error, "save": save_error, "save_to_preset": save_error}


class _Refused:
    """A method of a wrapped model that raises until `bake`: `REFUSED[method]`."""

    def __init__(self, model_name, method):
        self.model_name, self.method = model_name, method

    def __call__(self, *args, **kwargs):
        raise REFUSED[self.method](self.model_name)


def _train_lora_and_scores(layer):
    """Keeps the LoRA factors (and any scores) of a LoRA layer trainable."""
    layer.trainable = True
    for variable in layer.variables:
        variable.trainable = variable is layer.lora_kernel_a or variable is layer.lora_kernel_b
    if is_masked(layer):
        layer.scores.trainable = True


def random_scores(layer, seed):
    """A masked layer's starting scores: N(0, 0.02) in numpy, the same on every backend."""
    # Seeded by `seed` and the kernel's path: the same whichever other layers are wrapped.
    rng = np.random.default_rng([seed, zlib.crc32(layer.kernel_path.encode("utf-8"))])
    return rng.normal(0.0, 0.02, size=layer.frozen_kernel.shape).astype("float32")


def is_wrapped(model):
    """Whether any layer of `model` holds a mask."""
    return any(is_masked(layer) for layer in model._flatten_layers())


def masked_layers_of(model):
    """The masked layers of `model`, in model order; raises if there are none."""
    layers = [layer for layer in model._flatten_layers() if is_masked(layer)]
    if not layers:
        raise ValueError("This model has no masks: call `keras_mft.wrap(model)` first.")
    return layers


def masks_of(model: keras.Model) -> dict[str, np.ndarray]:
    """The current masks of a wrapped model: `{kernel path: boolean array, True where kept}`."""
    to_numpy = keras.ops.convert_to_numpy
    return {layer.kernel_path: to_numpy(layer.keep_mask()) for layer in masked_layers_of(model)}


def scores_of(model: keras.Model) -> dict[str, np.ndarray]:
    """The current scores of a wrapped model: `{kernel path: float32 array}`."""
    to_numpy = keras.ops.convert_to_numpy
    return {layer.kernel_path: to_numpy(layer.scores) for layer in masked_layers_of(model)}


def bake(model: keras.Model) -> keras.Model:
    """Makes a wrapped model a plain KerasHub model again, in place.

    Each masked kernel is multiplied by its current mask, the scores are
    dropped and the layers become plain `Dense` / `EinsumDense`. Every weight
    is trainable again (with LoRA: as after `enable_lora`), and a `CausalLM`
    is recompiled with KerasHub's defaults. The result saves with
    `save_to_preset` and loads with KerasHub alone.

    Args:
        model: a model returned by `keras_mft.wrap`.

    Returns:
        The same model object.
    """
    unmask(masked_layers_of(model))
    for layer in model._flatten_layers():
        for method in REFUSED:
            if isinstance(layer.__dict__.get(method), _Refused):  # the class's own again
                super(keras.layers.Layer, layer).__delattr__(method)
        # Layer by layer: on TensorFlow, `model.trainable` does not reach them all.
        layer.trainable = True
    lora = [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)]
    if lora:  # as after KerasHub's `enable_lora`: only LoRA trains
        for layer in model._flatten_layers(include_self=False):
            layer.trainable = False
        for layer in lora:
            train_like_lora(layer)
    if isinstance(model, keras_hub.models.CausalLM):
        model.compile(sampler=model.sampler)
    return model
