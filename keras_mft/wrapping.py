"""`wrap` and `bake`: put learnable masks on a KerasHub causal LM, then multiply them in.

`wrap` freezes the model and turns some projections into masked layers;
`bake` multiplies each mask into its kernel and makes the model plain again.
"""

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

    Every weight of the model is frozen. The selected projections of the
    selected decoder blocks become `MaskedDense` / `MaskedEinsumDense` layers
    with a float32 `scores` variable each; those scores are the only trainable
    variables, unless LoRA was enabled before wrapping
    (`model.backbone.enable_lora(rank)`): then the LoRA factors train too, and
    a layer with both computes `kernel * mask + LoRA's delta`. A `CausalLM`
    is recompiled with the paper's optimiser at a constant learning rate
    (`PaperAdamW`: AdamW as PyTorch computes it, learning rate 2e-5, weight
    decay 0, gradients clipped to a global norm of 1.0) and the paper's loss
    (`paper_loss`: the mean over the response tokens), so `model.fit(...)`
    works at once. For the paper's schedule and a score budget that moves the
    masks, recompile with `keras_mft.protocol.paper_optimizer` (see
    `keras_mft.score_budget`).

    Args:
        model: a KerasHub `CausalLM` or its backbone: Llama, Llama3, Mistral,
            Gemma, Gemma3, Qwen (2), Qwen3, Phi3 or GPT-2.
        layers: the decoder blocks to mask (0-based): a band `"start:stop"`
            (stop excluded, negative counts from the end, e.g. `"-4:"`), a
            list of block indices, or `"all"`. Defaults to `"0:4"`, the first
            four blocks (the paper's best band for instruction following).
        targets: the projections to mask in each block, by alias (`q, k, v, o,
            gate, up, down`), by the model's KerasHub layer name (`query`,
            ..., `feedforward_output_dense` in Llama) or by the Hugging Face
            name that PEFT's `target_modules` uses (`q_proj`, ..., `down_proj`). Defaults to all of the
            model's projections (seven; six in GPT-2, whose MLP has no gate).
        sparsity: the fraction of weights removed from each masked matrix,
            in [0, 1). Exactly `floor(sparsity * size)` entries are removed.
            Defaults to 0.1, the paper's ratio.
        attention_sparsity: overrides `sparsity` for `q, k, v, o`.
        mlp_sparsity: overrides `sparsity` for `gate, up, down`.
        selection: how the removed entries are chosen. `"per_matrix"` (the
            paper): each matrix removes its own smallest |scores|.
            `"global"`: the same projection of all the selected blocks shares
            one threshold, removing as many weights in total. `"N:M"`, e.g.
            `"2:4"`: keep the N largest of every M consecutive weights along
            the input dimension; the sparsity is then (M - N) / M, so leave
            the sparsity arguments unset. See `keras_mft.selection`.
        score_init: `"random"` (normal, stddev 0.02, as in the paper's code:
            the first mask is a random prune) or `"magnitude"` (`|W|`: the
            first mask is the L1-magnitude mask).
        seed: int seed of the random scores; the same seed gives the same
            scores on every backend.

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
    """Checks the block, target, sparsity and selection arguments against the model.

    Returns the (alias, layer, sparsity) of each projection to mask, and each
    alias' selection object. Changes nothing.
    """
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
    """The aliases of the projections that `targets` selects, validated.

    Args:
        targets: aliases or KerasHub layer names, or None for all of them.
        layer_names: the model's {alias: KerasHub layer name}.
    """
    if targets is None:
        return list(layer_names)
    if isinstance(targets, str):
        targets = [targets]
    alias_of = {alias: alias for alias in layer_names}
    alias_of.update({name: alias for alias, name in layer_names.items()})
    alias_of.update(
        {name: alias for name, alias in architectures.HF_NAMES.items() if alias in layer_names}
    )
    if not targets:
        raise ValueError(
            f"`targets` is empty: name at least one projection, from the aliases "
            f"{list(layer_names)} or the KerasHub layer names {list(layer_names.values())}."
        )
    unknown = [t for t in targets if t not in alias_of]
    if unknown:
        raise ValueError(
            f"Unknown targets {unknown}. This model's projections are the "
            f"aliases {list(layer_names)} or the KerasHub layer names "
            f"{list(layer_names.values())}."
        )
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
    """The starting scores of one layer, computed in numpy.

    Random scores come from a generator seeded by `seed` and the kernel's
    path, so they are identical on every backend and do not depend on which
    other layers are wrapped.
    """
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
    """The current hard masks of a wrapped model, as numpy arrays.

    Returns:
        `{kernel path: mask}`, each mask a boolean array of the kernel's
        shape, True where the weight is kept.
    """
    return {
        layer.kernel_path: keras.ops.convert_to_numpy(layer.keep_mask())
        for layer in masked_layers_of(model)
    }


def scores_of(model):
    """The current scores of a wrapped model, as numpy arrays.

    Returns:
        `{kernel path: scores}`, each a float32 array of the kernel's shape.
    """
    return {
        layer.kernel_path: keras.ops.convert_to_numpy(layer.scores)
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
    unmask(masked_layers_of(model))
    for layer in model._flatten_layers():
        if hasattr(layer, "_plain_quantize"):  # the model and backbone that `wrap` changed
            allow_quantize(layer)
    # Layer by layer: on TensorFlow, `model.trainable = True` does not reach
    # every sublayer that `wrap` froze.
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
