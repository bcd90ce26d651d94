"""`Dense` and `EinsumDense` with a learned binary mask over a frozen kernel.

The hook is Keras' LoRA hook: `call` reads `self.kernel`, and the `kernel`
property returns `kernel * mask` (plus LoRA's delta if LoRA was enabled
first). The trainable variable is `scores`, float32 and shaped like the
kernel, from which the mask is recomputed at every call.

`mask_layer` and `unmask` turn a built layer into its masked twin and back in
place, as `enable_lora` does, so its name, variables and paths stay.
"""

import gc
import math

import keras
from keras import ops

from keras_mft.masking import selection as selections
from keras_mft.masking.mask import check_sparsity
from keras_mft.masking.mask import masked_kernel
from keras_mft.masking.mask import zero_removed

# `scores_initializer` that starts the scores at |kernel|: the L1-magnitude mask.
MAGNITUDE = "magnitude"


class MaskedKernel:
    """What `MaskedDense` and `MaskedEinsumDense` add to their Keras parent.

    Masking adds exactly the attributes `_ATTRIBUTES`, the variables
    `_VARIABLES` (float32 `scores`, int32 `num_removed_variable` and
    `last_threshold`) and the methods below; unmasking removes exactly those.
    """

    _ATTRIBUTES = ("selection", "sparsity", "scores_initializer", "mask_config")
    _ATTRIBUTES += ("named_masks", "mask_name")
    _VARIABLES = ("scores", "num_removed_variable", "last_threshold")

    def __init__(
        self,
        *args,
        sparsity: float = 0.1,
        selection: str = "per_matrix",
        scores_initializer: str | keras.initializers.Initializer | None = None,
        **kwargs,
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
        if scores_initializer != MAGNITUDE:
            scores_initializer = keras.initializers.get(
                scores_initializer or keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
            )
        self.scores_initializer = scores_initializer
        self.mask_config = None  # the `keras_mft.MaskConfig` `wrap` masked this layer with
        self.named_masks = {}
        self.mask_name = None

    def _add_variables(self):
        """Freezes kernel and bias; adds the scores and the number removed."""
        self.selection.check(self, self._kernel.shape)
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
        # A variable, so that changing the sparsity does not retrace the step.
        count = keras.initializers.Constant(self._num_removed_for(self.sparsity))
        self.num_removed_variable = self.add_weight(
            name="num_removed", shape=(), initializer=count, dtype="int32", trainable=False
        )
        # Where the next selection looks first (`keras_mft.masking.mask.select`).
        # Not saved: -1, or any stale value, only costs one full search.
        none = keras.initializers.Constant(-1)
        self.last_threshold = self.add_weight(
            name="last_threshold", shape=(), initializer=none, dtype="int32", trainable=False
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

        With `selection="global"`, how many it removes now from the group's
        total (the sum of its members' floor(sparsity * size)).
        """
        if isinstance(self.selection, selections.Global):
            keep = ops.convert_to_numpy(self.keep_mask())
            return int(keep.size - keep.sum())
        return int(self.num_removed_variable)

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

    def _check_quantize_args(self, mode, compute_dtype):
        # Keras calls this first in every `quantize`, the layer's or a model's.
        raise quantize_error(self.name)

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

    # Kernel and bias under Keras' own keys ("0", "1"), then the scores, the
    # removed count and any LoRA factors: the exact training state.
    def save_own_variables(self, store):
        if not self.built:
            return
        for index, variable in enumerate(self._own_variables()):
            store[str(index)] = variable

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Masked layer '{self.name}' holds {len(variables)} variables (kernel, bias, "
                f"scores, num_removed, LoRA factors) but the weights file has "
                f"{len(store.keys())}. Load weights saved from a model wrapped the same way."
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

    Args:
        sparsity: float in [0, 1), the fraction of kernel entries removed:
            exactly `floor(sparsity * kernel.size)` of them.
        selection: `"per_matrix"` (the paper), `"global"` (set up by
            `keras_mft.wrap`) or `"N:M"`, e.g. `"2:4"`, which fixes the
            sparsity at (M - N) / M; see `keras_mft.selection`.
        scores_initializer: initializer of the float32 scores, or
            `"magnitude"` to start them at |kernel|. Defaults to
            `RandomNormal(stddev=0.02)`, as in the paper's code.
        **kwargs: the arguments of `keras.layers.Dense` (`units`, ...).

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

    The mask is computed over the whole kernel, whatever its rank, exactly as
    over the same weights laid out as a 2-D matrix.

    Args:
        sparsity: float in [0, 1), the fraction of kernel entries removed.
        selection: as for `MaskedDense`; N:M runs along the kernel axes the
            equation contracts with the input.
        scores_initializer: as for `MaskedDense`.
        **kwargs: the arguments of `keras.layers.EinsumDense`.
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


def mask_layer(layer, sparsity, selection="per_matrix", scores_initializer=None):
    """Turns a built `Dense`/`EinsumDense` into its masked twin, in place.

    Args:
        layer: a layer accepted by `check_maskable`.
        sparsity: float in [0, 1), the fraction of kernel entries removed
            (ignored for an N:M `selection`).
        selection: a name or an object of `keras_mft.masking.selection`.
        scores_initializer: as for `MaskedDense`.
    """
    check_maskable(layer)
    layer.__class__ = _MASKED_TWIN[type(layer)]
    layer._set_attributes(selection, sparsity, scores_initializer)
    layer.trainable = True
    layer._add_variables()


def unmask(masked):
    """Multiplies the masks into the kernels and restores the plain layers."""
    # Every kernel first: a global group's masks read all its members' scores.
    for layer in masked:
        layer._kernel.assign(zero_removed(layer._kernel.value, layer.keep_mask()))
    for layer in masked:
        for name in MaskedKernel._VARIABLES:
            # `Layer.__delattr__` without its `gc.collect()`, which takes most
            # of a second with a large model: collect once, at the end.
            layer._untrack_variable(getattr(layer, name))
            super(keras.layers.Layer, layer).__delattr__(name)
        for name in MaskedKernel._ATTRIBUTES:
            delattr(layer, name)
        layer.__class__ = next(base for base, twin in _MASKED_TWIN.items() if type(layer) is twin)
        for variable in layer.variables:  # `layer.trainable` misses some on TensorFlow
            variable.trainable = True
    gc.collect()


def train_like_lora(layer):
    """Trains a LoRA-enabled layer as Keras' `enable_lora` leaves it: all but its kernel."""
    layer.trainable = True
    layer._kernel.trainable = False


def quantize_error(name):
    return ValueError(
        f"'{name}' holds masks and cannot be quantized. Call "
        "`keras_mft.bake(model)` first, then quantize the baked model."
    )
