"""`wrap` puts learnable masks on a KerasHub causal LM; `bake` multiplies them in."""

import contextlib
import zlib

import keras
import keras_hub
import numpy as np

from keras_mft import architectures
from keras_mft import selection as selections
from keras_mft.mask import check_sparsity
from keras_mft.masked_layers import MAGNITUDE
from keras_mft.masked_layers import allow_quantize
from keras_mft.masked_layers import check_maskable
from keras_mft.masked_layers import is_masked
from keras_mft.masked_layers import mask_layer
from keras_mft.masked_layers import refuse_quantize
from keras_mft.masked_layers import unmask
from keras_mft.training import GLOBAL_CLIPNORM
from keras_mft.training import LEARNING_RATE
from keras_mft.training import PaperAdamW
from keras_mft.training import compile_like_paper

DEFAULT_BAND = "0:4"
DEFAULT_SPARSITY = 0.1
SCORE_INITS = ("random", "magnitude")


def wrap(
    model,
    *,
    layers=None,
    targets=None,
    sparsity=None,
    attention_sparsity=None,
    mlp_sparsity=None,
    selection="per_matrix",
    score_init="random",
    seed=None,
):
    """Prepares a KerasHub causal LM for Mask Fine-Tuning, in place.

    Every weight is frozen, and the chosen projections of the chosen decoder
    blocks become `MaskedDense` / `MaskedEinsumDense` layers whose float32
    `scores` are the only trainable variables (with the LoRA factors, if
    `enable_lora` was called first: the kernel is then `kernel * mask` plus
    LoRA's delta). A `CausalLM` is recompiled with `PaperAdamW` at a constant
    2e-5 and `paper_loss`, so `model.fit` works at once; for the paper's
    schedule and a score budget, see `keras_mft.protocol`.

    Args:
        model: a KerasHub `CausalLM` or its backbone: Llama, Llama3, Mistral,
            Gemma, Gemma3, Qwen (2), Qwen3, Phi3 or GPT-2.
        layers: the decoder blocks to mask (0-based): a band `"start:stop"`
            (stop excluded, negative counts from the end, e.g. `"-4:"`), a
            list of indices, or `"all"`. Defaults to `"0:4"`.
        targets: the projections to mask in each block, by alias (`q, k, v,
            o, gate, up, down`), KerasHub layer name (`query`, ...) or Hugging
            Face name (`q_proj`, ...). Defaults to all of them.
        sparsity: the fraction of weights removed from each masked matrix,
            in [0, 1): exactly `floor(sparsity * size)`. Defaults to 0.1.
        attention_sparsity: overrides `sparsity` for `q, k, v, o`.
        mlp_sparsity: overrides `sparsity` for `gate, up, down`.
        selection: `"per_matrix"` (the paper), `"global"` (one threshold per
            projection over the blocks) or `"N:M"`, e.g. `"2:4"`, which fixes
            the sparsity: leave the sparsity arguments unset. See
            `keras_mft.selection`.
        score_init: `"random"` (normal, stddev 0.02: the first mask is a
            random prune) or `"magnitude"` (`|W|`: the L1-magnitude mask).
        seed: int seed of the random scores, the same on every backend.

    Returns:
        The same model object, wrapped.

    Example:

    ```python
    # Or any KerasHub Llama: keras_hub.models.Llama3CausalLM.from_preset(...)
    model = keras_mft.smollm2_135m_instruct()
    model = keras_mft.wrap(model, layers="4:8", sparsity=0.1)
    [v.path for v in model.trainable_variables][:2]
    # ['transformer_layer_4/self_attention/query/scores', ...]
    # model.fit(...) learns the masks; then a plain KerasHub model:
    model = keras_mft.bake(model)
    ```
    """
    backbone = architectures.backbone_of(model)
    if any(is_masked(layer) for layer in model._flatten_layers()):
        raise ValueError(
            "This model is already wrapped. Call `keras_mft.bake(model)` to "
            "finish the current masks, or wrap a freshly loaded model."
        )
    selected, selection_of = _plan(
        backbone, layers, targets, sparsity, attention_sparsity, mlp_sparsity, selection
    )
    if score_init not in SCORE_INITS:
        raise ValueError(
            f"`score_init` must be one of {SCORE_INITS}. Received: score_init={score_init!r}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"`seed` must be an int or None. Received: seed={seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"`seed` must be a non-negative int or None. Received: seed={seed!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**32)

    # Every check has passed: from here on the model is changed.
    model.trainable = True
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for alias, layer, layer_sparsity in selected:
        scores = initial_scores(layer, score_init, seed)
        mask_layer(
            layer,
            layer_sparsity,
            scores,
            selection_of[alias],
            MAGNITUDE if score_init == "magnitude" else None,
        )
        if isinstance(layer.selection, selections.Global):
            layer.selection.layers.append(layer)
    for refusing in {id(model): model, id(backbone): backbone}.values():
        refuse_quantize(refusing)
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            train_only_lora_factors(layer)

    if isinstance(model, keras_hub.models.CausalLM):
        compile_like_paper(model, PaperAdamW(LEARNING_RATE, global_clipnorm=GLOBAL_CLIPNORM))
    return model


class InvalidArgument(ValueError):
    """A `wrap` argument that this model cannot take; `argument` names it."""

    def __init__(self, argument, message):
        super().__init__(message)
        self.argument = argument


@contextlib.contextmanager
def _checking(argument):
    """Turns a ValueError raised while checking `argument` into `InvalidArgument`."""
    try:
        yield
    except ValueError as error:
        raise InvalidArgument(argument, str(error)) from None


def _plan(backbone, layers, targets, sparsity, attention_sparsity, mlp_sparsity, selection):
    """Checks wrap's arguments; returns each (alias, layer, sparsity) and each alias' selection."""
    blocks = backbone.transformer_layers
    with _checking("layers"):
        chosen_blocks = parse_layers(layers, len(blocks))
    with _checking("targets"):
        aliases = parse_targets(targets, architectures.layer_names_of(backbone))
    with _checking("selection"):
        chosen_selection = selections.get(selection)
        given = {
            "sparsity": sparsity,
            "attention_sparsity": attention_sparsity,
            "mlp_sparsity": mlp_sparsity,
        }
        given = [name for name, value in given.items() if value is not None]
        if chosen_selection.fixed_sparsity is not None and given:
            raise ValueError(
                f"selection={selection!r} fixes the sparsity at "
                f"{chosen_selection.fixed_sparsity}; leave {', '.join(given)} unset."
            )
    sparsity = check_sparsity(DEFAULT_SPARSITY if sparsity is None else sparsity)
    sparsity_of = {
        "attention": sparsity
        if attention_sparsity is None
        else check_sparsity(attention_sparsity, "attention_sparsity"),
        "mlp": sparsity if mlp_sparsity is None else check_sparsity(mlp_sparsity, "mlp_sparsity"),
    }
    selected = []
    for index in chosen_blocks:
        projections = architectures.projections_of(backbone, blocks[index])
        for alias in aliases:
            layer = projections[alias]
            check_maskable(layer)
            with _checking("selection"):
                chosen_selection.check(layer)
            selected.append((alias, layer, sparsity_of[architectures.GROUP_OF[alias]]))
    # A global selection is one object per projection, shared by its blocks.
    selection_of = {alias: chosen_selection for alias in aliases}
    if isinstance(chosen_selection, selections.Global):
        selection_of = {alias: selections.Global() for alias in aliases}
    return selected, selection_of


def parse_layers(layers, num_blocks):
    """The sorted block indices that `layers` selects, validated."""
    if layers is None:
        layers = DEFAULT_BAND if num_blocks >= 4 else "all"
    if isinstance(layers, str):
        if layers == "all":
            return list(range(num_blocks))
        return _parse_band(layers, num_blocks)
    if not isinstance(layers, (list, tuple)):
        raise TypeError(
            "`layers` must be a band like '20:24', a list of block indices, "
            f"or 'all'. Received: layers={layers!r}"
        )
    if not layers:
        raise ValueError("`layers` is empty: name at least one decoder block.")
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"`layers` must contain ints. Received: layers={layers!r}")
        if not 0 <= index < num_blocks:
            raise ValueError(
                f"Block {index} does not exist: this model has {num_blocks} "
                f"decoder blocks, numbered 0 to {num_blocks - 1}."
            )
    if len(set(layers)) != len(layers):
        raise ValueError(f"`layers` lists a block twice. Received: layers={layers!r}")
    return sorted(layers)


def _parse_band(band, num_blocks):
    parts = band.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else num_blocks
    except ValueError:
        raise ValueError(
            "A band of blocks is written 'start:stop', e.g. '20:24' for blocks "
            f"20, 21, 22 and 23. Received: layers={band!r}"
        ) from None
    start = start + num_blocks if start < 0 else start
    stop = stop + num_blocks if stop < 0 else stop
    if not 0 <= start < stop <= num_blocks:
        raise ValueError(
            f"The band {band!r} selects no valid blocks: this model has "
            f"{num_blocks} decoder blocks, so 'start:stop' needs "
            f"0 <= start < stop <= {num_blocks}."
        )
    return list(range(start, stop))


def parse_targets(targets, layer_names):
    """The aliases that `targets` selects, given the model's {alias: KerasHub layer name}."""
    if targets is None:
        return list(layer_names)
    if isinstance(targets, str):
        targets = [targets]
    alias_of = {alias: alias for alias in layer_names}
    alias_of.update({name: alias for alias, name in layer_names.items()})
    alias_of.update(
        {name: alias for name, alias in architectures.HF_NAMES.items() if alias in layer_names}
    )
    choices = f"the aliases {list(layer_names)} or the KerasHub layer names"
    choices += f" {list(layer_names.values())}"
    if not targets:
        raise ValueError(f"`targets` is empty: name at least one projection, from {choices}.")
    unknown = [t for t in targets if t not in alias_of]
    if unknown:
        raise ValueError(f"Unknown targets {unknown}. This model's projections are {choices}.")
    chosen = {alias_of[t] for t in targets}
    return [alias for alias in layer_names if alias in chosen]


def train_only_lora_factors(layer):
    """Keeps the LoRA factors (and any scores) of a LoRA layer trainable."""
    layer.trainable = True
    for variable in layer.variables:
        variable.trainable = variable is layer.lora_kernel_a or variable is layer.lora_kernel_b
    if is_masked(layer):
        layer.scores.trainable = True


def initial_scores(layer, score_init, seed):
    """One layer's starting scores, in numpy."""
    # Seeded by `seed` and the kernel's path: the same on every backend,
    # whichever other layers are wrapped.
    kernel = keras.ops.convert_to_numpy(layer._kernel).astype("float32")
    if score_init == "magnitude":
        return np.abs(kernel)
    path_key = zlib.crc32(layer._kernel.path.encode("utf-8"))  # a plain layer: Keras' name
    rng = np.random.default_rng([seed, path_key])
    return rng.normal(0.0, 0.02, size=kernel.shape).astype("float32")


def masked_layers_of(model):
    """The masked layers of `model`, in model order; raises if there are none."""
    layers = [layer for layer in model._flatten_layers() if is_masked(layer)]
    if not layers:
        raise ValueError("This model has no masks: call `keras_mft.wrap(model)` first.")
    return layers


def masks_of(model):
    """The current masks of a wrapped model: `{kernel path: boolean array, True where kept}`."""
    return {
        layer.kernel_path: keras.ops.convert_to_numpy(layer.keep_mask())
        for layer in masked_layers_of(model)
    }


def scores_of(model):
    """The current scores of a wrapped model: `{kernel path: float32 array}`."""
    return {
        layer.kernel_path: keras.ops.convert_to_numpy(layer.scores)
        for layer in masked_layers_of(model)
    }


def bake(model):
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
        if hasattr(layer, "_plain_quantize"):  # the model and backbone that `wrap` changed
            allow_quantize(layer)
    # Layer by layer: on TensorFlow, `model.trainable` does not reach them all.
    for layer in model._flatten_layers():
        layer.trainable = True
    lora_layers = [
        layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)
    ]
    if lora_layers:  # as after KerasHub's `enable_lora`: only LoRA trains
        for layer in model._flatten_layers(include_self=False):
            layer.trainable = False
        for layer in lora_layers:
            layer.trainable = True
            layer._kernel.trainable = False
    if isinstance(model, keras_hub.models.CausalLM):
        model.compile(sampler=model.sampler)
    return model
