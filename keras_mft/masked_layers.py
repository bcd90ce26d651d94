"""`Dense` and `EinsumDense` with a learned binary mask over a frozen kernel.

The hook is the one Keras uses for LoRA: `call` is Keras' own and reads
`self.kernel`, and the `kernel` property returns the effective kernel, here
`kernel * mask` (plus LoRA's delta when LoRA was enabled before masking). The
kernel and bias are frozen; the trainable variable is `scores` (and any LoRA
factors), float32 and shaped like the kernel, from which the mask is recomputed
at every call (see `keras_mft.mask` and, for the other ways of choosing the
removed entries, `keras_mft.selection`).

`mask_layer` and `unmask` turn a built KerasHub projection into its masked
twin and back in place, the way `enable_lora` does, so the layer keeps its
name, its variables and their paths.
"""

import gc
import math
import warnings

import keras
from keras import ops

from keras_mft import selection as selections
from keras_mft.mask import check_sparsity
from keras_mft.mask import masked_kernel
from keras_mft.mask import zero_removed

# `scores_initializer` that starts the scores at |kernel|: the first mask is the
# L1-magnitude mask.
MAGNITUDE = "magnitude"


class MaskedKernel:
    """What `MaskedDense` and `MaskedEinsumDense` add to their Keras parent.

    A masked layer has, besides its parent's attributes: `scores` (float32,
    shaped like the kernel, trainable), `num_removed_variable` (int32), the
    `sparsity`, the `selection` object (see `keras_mft.selection`) and the
    `scores_initializer`, and the methods and properties below. Masking adds
    exactly the attributes `_ATTRIBUTES` and the variables `_VARIABLES`;
    unmasking removes exactly those.
    """

    _ATTRIBUTES = ("selection", "sparsity", "scores_initializer")
    _VARIABLES = ("scores", "num_removed_variable")

    def __init__(
        self, *args, sparsity=0.1, selection="per_matrix", scores_initializer=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self._set_attributes(selection, sparsity, scores_initializer)

    def build(self, input_shape):
        super().build(input_shape)
        self._add_variables()

    def _set_attributes(self, selection, sparsity, scores_initializer):
        self.selection = selections.get(selection)
        fixed = self.selection.fixed_sparsity
        self.sparsity = check_sparsity(sparsity if fixed is None else fixed)
        self.scores_initializer = _scores_initializer(scores_initializer)

    def _add_variables(self):
        """Freezes kernel and bias; adds the scores and the number removed."""
        self.selection.check(self)
        self._kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        magnitude = self.scores_initializer == MAGNITUDE
        self._tracker.unlock()
        self.scores = self.add_weight(
            name="scores",
            shape=self._kernel.shape,
            initializer="zeros" if magnitude else self.scores_initializer,
            dtype="float32",
            # Adam updates of small scores underflow in bfloat16.
            autocast=False,
            trainable=True,
        )
        # A variable, not a Python int, so that the sparsity can change during
        # training without retracing the train step.
        self.num_removed_variable = self.add_weight(
            name="num_removed",
            shape=(),
            initializer=keras.initializers.Constant(self._num_removed_for(self.sparsity)),
            dtype="int32",
            trainable=False,
        )
        self._tracker.lock()
        if magnitude:
            self.scores.assign(ops.abs(ops.cast(self._kernel, "float32")))

    @property
    def frozen_kernel(self):
        """The stored kernel, before the mask (and LoRA's delta) is applied."""
        return self._kernel

    @property
    def kernel_path(self):
        """The stored kernel's variable path: the key of this mask in mask files."""
        return self._kernel.path

    @property
    def num_removed(self):
        """How many kernel entries the mask removes: floor(sparsity * size).

        With `selection="global"`, how many it removes now: the group removes
        the sum of its members' floor(sparsity * size), shared by one threshold.
        """
        if isinstance(self.selection, selections.Global):
            keep = ops.convert_to_numpy(self.keep_mask())
            return int(keep.size - keep.sum())
        return int(self.num_removed_variable)

    @property
    def removed_count(self):
        """Deprecated name of `num_removed_variable`, kept for one release."""
        warnings.warn(
            "`removed_count` is deprecated: use `num_removed_variable` (or the int `num_removed`).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.num_removed_variable

    def set_sparsity(self, sparsity):
        """Changes the fraction of the kernel that the mask removes."""
        if self.selection.fixed_sparsity is not None:
            raise ValueError(
                f"Layer '{self.name}' keeps {self.selection.name} weights, which "
                "fixes its sparsity; it cannot be changed (nor ramped)."
            )
        self.sparsity = check_sparsity(sparsity)
        self.num_removed_variable.assign(self._num_removed_for(self.sparsity))

    def _num_removed_for(self, sparsity):
        return self.selection.num_removed(math.prod(self._kernel.shape), sparsity)

    @property
    def kernel(self):
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        if getattr(self, "scores", None) is None:
            return self._kernel  # inside `build`, where Keras enables LoRA
        kernel = masked_kernel(self._kernel, self.scores, self.keep_mask())
        if self.lora_enabled:  # LoRA's delta is added to the masked kernel
            delta = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
            kernel = ops.cast(
                kernel + (self.lora_alpha / self.lora_rank) * delta, self.compute_dtype
            )
        return kernel

    def keep_mask(self):
        """The current mask as a boolean tensor, True where a weight is kept."""
        return self.selection.keep(self)

    def hard_mask(self):
        """The current mask as a float32 tensor of 0s and 1s, no gradient."""
        return ops.cast(self.keep_mask(), "float32")

    def quantize(self, mode=None, **kwargs):
        raise quantize_error(self)

    def enable_lora(self, *args, **kwargs):
        if getattr(self, "scores", None) is None:
            # Building from a config with `lora_rank`: Keras' `build` enables
            # LoRA before the scores exist, as `wrap` does on a LoRA layer.
            return super().enable_lora(*args, **kwargs)
        raise NotImplementedError(
            f"Layer '{self.name}' is already masked. To combine LoRA with MFT, "
            "enable LoRA first (`model.backbone.enable_lora(rank)`), then call "
            "`keras_mft.wrap(model)`. KerasHub's `enable_lora` may already have "
            "frozen or changed other layers: reload the model and start again."
        )

    def _own_variables(self):
        variables = [self._kernel, self.bias, self.scores, self.num_removed_variable]
        if self.lora_enabled:
            variables += [self.lora_kernel_a, self.lora_kernel_b]
        return [v for v in variables if v is not None]

    # The raw kernel and bias are saved under Keras' own keys ("0", "1"), and
    # the scores, removed count and any LoRA factors after them, so that
    # `save_weights` / `load_weights` restore the exact training state.
    def save_own_variables(self, store):
        if not self.built:
            return
        for index, variable in enumerate(self._own_variables()):
            store[str(index)] = variable

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Masked layer '{self.name}' expected {len(variables)} "
                "variables (kernel, bias if any, scores, num_removed, LoRA "
                "factors if any) but the "
                f"weights file has {len(store.keys())}. Load weights saved from a model "
                "wrapped with the same `layers` and `targets`."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[str(index)])

    def get_config(self):
        config = super().get_config()
        config["sparsity"] = self.sparsity
        config["selection"] = self.selection.name
        config["scores_initializer"] = (
            MAGNITUDE
            if self.scores_initializer == MAGNITUDE
            else keras.initializers.serialize(self.scores_initializer)
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mft")
class MaskedDense(MaskedKernel, keras.layers.Dense):
    """A `keras.layers.Dense` whose frozen kernel is multiplied by a learned mask.

    It takes the arguments of `keras.layers.Dense` (`units`, ...), and:

    Args:
        sparsity: float in [0, 1), the fraction of kernel entries removed:
            exactly `floor(sparsity * kernel.size)` of them.
        selection: `"per_matrix"` (the paper), `"global"` (set up by
            `keras_mft.wrap`) or `"N:M"`, e.g. `"2:4"`, which fixes the
            sparsity at (M - N) / M; see `keras_mft.selection`.
        scores_initializer: initializer of the float32 scores, or
            `"magnitude"` to start them at |kernel| (the first mask is then the
            L1-magnitude mask). Defaults to `RandomNormal(stddev=0.02)`, the
            paper's effective initialization.
        **kwargs: the other arguments of `keras.layers.Dense`.

    Example:

    ```python
    layer = keras_mft.MaskedDense(4, sparsity=0.25)
    y = layer(np.ones((2, 8)))
    [v.name for v in layer.trainable_variables]  # ['scores']
    np.sum(keras.ops.convert_to_numpy(layer.hard_mask()) == 0)  # 8 of 32
    ```
    """


@keras.saving.register_keras_serializable(package="keras_mft")
class MaskedEinsumDense(MaskedKernel, keras.layers.EinsumDense):
    """A `keras.layers.EinsumDense` whose frozen kernel is multiplied by a mask.

    The mask is computed over the whole kernel, whatever its rank: a 3-D
    attention kernel removes `floor(sparsity * kernel.size)` entries, exactly
    as the same weights laid out as a 2-D matrix would.

    It takes the arguments of `keras.layers.EinsumDense` (`equation`,
    `output_shape`, ...), and:

    Args:
        sparsity: float in [0, 1), the fraction of kernel entries removed.
        selection: as for `MaskedDense`; N:M runs along the kernel axes the
            equation contracts with the input.
        scores_initializer: as for `MaskedDense`.
        **kwargs: the other arguments of `keras.layers.EinsumDense`.
    """


_MASKED_TWIN = {
    keras.layers.Dense: MaskedDense,
    keras.layers.EinsumDense: MaskedEinsumDense,
}


def is_masked(layer):
    return isinstance(layer, MaskedKernel)


def check_maskable(layer):
    """Raises unless `layer` is a built, float `Dense`/`EinsumDense` (LoRA or not)."""
    if type(layer) not in _MASKED_TWIN:
        raise TypeError(
            f"Layer '{layer.name}' is a {type(layer).__name__}; keras-mft masks "
            "only `keras.layers.Dense` and `keras.layers.EinsumDense`."
        )
    if not layer.built:
        raise ValueError(
            f"Layer '{layer.name}' is not built. Build the model (KerasHub "
            "models are built when created) before wrapping it."
        )
    if layer.quantization_mode is not None:
        raise ValueError(
            f"Layer '{layer.name}' is quantized "
            f"({layer.quantization_mode}). Wrap the float model, then bake and "
            "quantize it."
        )


def mask_layer(layer, sparsity, initial_scores, selection="per_matrix", scores_initializer=None):
    """Turns a built `Dense`/`EinsumDense` into its masked twin, in place.

    Args:
        layer: a layer accepted by `check_maskable`.
        sparsity: float in [0, 1), the fraction of kernel entries removed
            (ignored for an N:M `selection`).
        initial_scores: array shaped like the kernel.
        selection: a name or an object of `keras_mft.selection`.
        scores_initializer: what the layer's config reports as the origin of
            `initial_scores`, as for `MaskedDense`.
    """
    check_maskable(layer)
    layer.__class__ = _MASKED_TWIN[type(layer)]
    refuse_quantize(layer)
    layer._set_attributes(selection, sparsity, scores_initializer)
    layer.trainable = True
    layer._add_variables()
    layer.scores.assign(initial_scores)


def _scores_initializer(initializer):
    """A Keras initializer, or `"magnitude"`: the scores start as |kernel|."""
    if initializer == MAGNITUDE:
        return MAGNITUDE
    return keras.initializers.get(
        initializer or keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
    )


def unmask(masked):
    """Multiplies the masks into the kernels and restores the plain layers.

    Every kernel is masked before any scores are dropped, because the mask of
    a layer in a global group depends on the other members' scores.
    """
    for layer in masked:
        layer._kernel.assign(zero_removed(layer._kernel.value, layer.keep_mask()))
    for layer in masked:
        for name in MaskedKernel._VARIABLES:
            _drop_variable(layer, name)
        for name in MaskedKernel._ATTRIBUTES:
            delattr(layer, name)
        layer.__class__ = next(base for base, twin in _MASKED_TWIN.items() if type(layer) is twin)
        allow_quantize(layer)
        for variable in layer.variables:
            variable.trainable = True
        if layer.lora_enabled:
            layer._kernel.trainable = False
    gc.collect()


def quantize_error(layer):
    return ValueError(
        f"'{layer.name}' holds masks and cannot be quantized. Call "
        "`keras_mft.bake(model)` first, then quantize the baked model."
    )


def refuse_quantize(layer):
    """Makes `layer.quantize` (a layer's or a model's) refuse, until `allow_quantize`.

    Keras binds `quantize` to each layer and model object when it is created,
    so swapping a layer's class keeps `Dense`'s own; and `Model.quantize`
    would quantize the plain layers that come before the first masked one.
    So `wrap` makes the model itself refuse, before any layer changes.
    """
    layer._plain_quantize = layer.__dict__.get("quantize")

    def quantize(*args, **kwargs):
        raise quantize_error(layer)

    layer.quantize = quantize


def allow_quantize(layer):
    """Undoes `refuse_quantize`."""
    if layer._plain_quantize is None:
        layer.__dict__.pop("quantize")  # the class's own, as before
    else:
        layer.quantize = layer._plain_quantize
    del layer._plain_quantize


def _drop_variable(layer, name):
    """Deletes a variable attribute as `Layer.__delattr__` does, minus its `gc.collect()`.

    Keras collects garbage after every deleted variable so that the device frees
    the buffer; that takes most of a second in a process holding a large model,
    so `unmask` collects once for all of them.
    """
    layer._untrack_variable(getattr(layer, name))
    super(keras.layers.Layer, layer).__delattr__(name)
