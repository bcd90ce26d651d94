"""Several named masks on one model, switched without reloading it.

`keras_mft.load_masks(model, path, name="math")` keeps the file's masks under
that name and puts them in use; `use_masks` switches. The model is wrapped
once (per-matrix selection) over every kernel that some loaded mask covers.
Each masked layer keeps every name's mask as packed bits in host memory
(`named_masks`, one bit per weight, with its sparsity and its file's
`MaskConfig`) and which one it uses (`mask_name`). A switch writes the
chosen mask into the layer's scores (1.0 kept, 0.0 removed) and its count of
removed weights, a variable: no retracing. A layer that no mask in use
covers removes nothing, and `where(keep, W, 0)` with every entry kept is `W`
itself, so the outputs are those of the base model, or of each mask baked
alone, exactly.
"""

from collections.abc import Sequence

import keras
import keras_hub
import numpy as np

from keras_mft.masking import selection as selections
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.layers import is_masked
from keras_mft.masking.layers import mask_layer
from keras_mft.masking.wrapping import masked_layers_of
from keras_mft.masking.wrapping import wrap
from keras_mft.training.optimizer import compile_like_paper


def use_masks(model: keras.Model, names: str | Sequence[str] | None) -> keras.Model:
    """Puts the named masks in use: one name, several, or none.

    Args:
        model: a model that `keras_mft.load_masks(..., name=...)` loaded
            masks into.
        names: a name, a list of names whose masks cover different kernels
            (other blocks or other projections), or `None` for no mask at all:
            the base model exactly.

    Returns:
        The same model object.

    Example:

    ```python
    for name, band in (("math", "0:4"), ("code", "4:8")):
        keras_mft.save_masks(keras_mft.wrap(keras_mft.tiny_smollm2(), layers=band), f"{name}.mask")
    model = keras_mft.tiny_smollm2()
    keras_mft.load_masks(model, "math.mask", name="math")
    keras_mft.load_masks(model, "code.mask", name="code")
    keras_mft.use_masks(model, "math")
    keras_mft.use_masks(model, ["math", "code"])  # blocks 0-3 and 4-7
    keras_mft.use_masks(model, None)  # the base model exactly
    ```
    """
    layers = _masked(model)
    loaded = mask_names(model)
    if not loaded:
        raise ValueError(
            "This model holds no named masks: load some with "
            "`keras_mft.load_masks(model, path, name=...)` first."
        )
    names = [] if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in loaded]
    if unknown:
        raise ValueError(f"No masks are loaded under the names {unknown}; loaded: {loaded}.")
    owner = {}
    for name in names:
        for layer in layers:
            if name in layer.named_masks:
                if layer.kernel_path in owner:
                    raise ValueError(
                        f"The masks {owner[layer.kernel_path]!r} and {name!r} both "
                        f"mask {layer.kernel_path}: masks are used together only "
                        "when they cover different kernels. Use one of them."
                    )
                owner[layer.kernel_path] = name
    # Every check has passed: from here on the model is changed.
    for layer in layers:
        _show(layer, owner.get(layer.kernel_path))
    return model


def mask_names(model: keras.Model) -> list[str]:
    """The names of the masks loaded into `model`, sorted."""
    return sorted({name for layer in _masked(model) for name in layer.named_masks})


def layers_in_use(model):
    """The masked layers whose mask is in use: all of them unless masks are named."""
    return [
        layer
        for layer in masked_layers_of(model)
        if not layer.named_masks or layer.mask_name is not None
    ]


def add(model, name, records, layer_of, config):
    """Keeps checked `records` under `name` in `model` and puts them in use.

    Args:
        model: the model, not wrapped yet or holding named masks.
        name: a new name.
        records: `{kernel path: record}` of a mask file, each with its
            `bits`, already checked against the model's kernels.
        layer_of: `{kernel path: (block index, alias, layer)}` of the records.
        config: the file's `MaskConfig`, or None.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
    masked = _masked(model)
    if masked and not any(layer.named_masks for layer in masked):
        raise ValueError(
            "This model is wrapped for training, so its masks are its scores. "
            "Load named masks onto a model that is not wrapped (or one that "
            "holds named masks), or load this file without a `name`."
        )
    if name in mask_names(model):
        raise ValueError(f"A mask named {name!r} is already loaded: choose another name.")
    kinds = {record["selection"] for record in records.values()}
    if kinds != {selections.PerMatrix.name}:
        raise ValueError(
            f"Named masks are per-matrix masks (the paper's); this file's use "
            f"{sorted(kinds)}. Load it without a `name`."
        )
    # Every check has passed: from here on the model is changed.
    if not masked:
        blocks = sorted({index for index, _, _ in layer_of.values()})
        aliases = list(dict.fromkeys(alias for _, alias, _ in layer_of.values()))
        wrap(model, MaskConfig(layers=blocks, targets=aliases, sparsity=0.0, seed=0))
    else:
        added = [layer for _, _, layer in layer_of.values() if not is_masked(layer)]
        for layer in added:
            mask_layer(layer, 0.0)
        if added and isinstance(model, keras_hub.models.CausalLM):
            # New trainable variables: the compiled functions must see them.
            compile_like_paper(model)
    for kernel_path, (_, _, layer) in layer_of.items():
        record = records[kernel_path]
        bits = np.packbits(record["bits"], bitorder="little")
        layer.named_masks[name] = (bits, record["sparsity"], config)
    use_masks(model, name)


def _masked(model):
    """The masked layers of `model`, none if it is not wrapped."""
    return [layer for layer in model._flatten_layers() if is_masked(layer)]


def _show(layer, name):
    """Makes `layer` use the mask named `name`, or no mask if `name` is None."""
    shape = layer.frozen_kernel.shape
    size = int(np.prod(shape))
    if name is None:
        keep, sparsity, config = np.ones(size, bool), 0.0, None
    else:
        bits, sparsity, config = layer.named_masks[name]
        keep = np.unpackbits(bits, count=size, bitorder="little").astype(bool)
    layer.scores.assign(keep.astype("float32").reshape(shape))
    layer.num_removed_variable.assign(size - int(keep.sum()))
    layer.sparsity, layer.mask_config, layer.mask_name = sparsity, config, name
