"""`Dense` and `EinsumDense` with a learned binary mask over a frozen kernel.

The hook is the one Keras uses for LoRA: `call` is Keras' own and reads
`self.kernel`, and the `kernel` property returns the effective kernel, here
`kernel * mask`. The kernel and bias are frozen; the only trainable variable is
`scores`, float32 and shaped like the kernel, from which the mask is recomputed
at every call (see `keras_mft.mask`).

`mask_layer` and `unmask_layer` turn a built KerasHub projection into its masked
twin and back in place, the way `enable_lora` does, so the layer keeps its
name, its variables and their paths.
"""

import math

import keras
from keras import ops

from keras_mft.mask import check_sparsity
from keras_mft.mask import keep_mask
from keras_mft.mask import num_removed
from keras_mft.mask import straight_through_mask


class MaskedKernel:
    """What `MaskedDense` and `MaskedEinsumDense` add to their Keras parent."""

    def __init__(self, *args, sparsity=0.1, scores_initializer=None, **kwargs):
        if kwargs.get("lora_rank"):
            raise ValueError(
                "A masked layer cannot also use LoRA. Remove `lora_rank`."
            )
        super().__init__(*args, **kwargs)
        self.sparsity = check_sparsity(sparsity)
        self.scores_initializer = keras.initializers.get(
            scores_initializer
            or keras.initializers.RandomNormal(mean=0.0, stddev=0.02)
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._add_scores(self.scores_initializer)

    def _add_scores(self, initializer):
        """Freezes kernel and bias; adds `scores` and `removed_count`."""
        self._kernel.trainable = False
        if self.bias is not None:
            self.bias.trainable = False
        self._tracker.unlock()
        self.scores = self.add_weight(
            name="scores",
            shape=self._kernel.shape,
            initializer=initializer,
            dtype="float32",
            # Adam updates of small scores underflow in bfloat16.
            autocast=False,
            trainable=True,
        )
        # A variable, not a Python int, so that the sparsity can change during
        # training without retracing the train step.
        self.removed_count = self.add_weight(
            name="removed_count",
            shape=(),
            initializer=keras.initializers.Constant(
                self._removed_for(self.sparsity)
            ),
            dtype="int32",
            trainable=False,
        )
        self._tracker.lock()

    @property
    def num_removed(self):
        """How many kernel entries the mask removes: floor(sparsity * size)."""
        return int(ops.convert_to_numpy(self.removed_count))

    def set_sparsity(self, sparsity):
        """Changes the fraction of the kernel that the mask removes."""
        self.sparsity = check_sparsity(sparsity)
        self.removed_count.assign(self._removed_for(self.sparsity))

    def _removed_for(self, sparsity):
        return num_removed(math.prod(self._kernel.shape), sparsity)

    @property
    def kernel(self):
        if not self.built:
            raise AttributeError(
                "You must build the layer before accessing `kernel`."
            )
        mask = straight_through_mask(self.scores, self.removed_count)
        return self._kernel * ops.cast(mask, self.compute_dtype)

    def hard_mask(self):
        """The current mask as a float32 tensor of 0s and 1s, no gradient."""
        return keep_mask(
            ops.convert_to_tensor(self.scores), ops.convert_to_tensor(self.removed_count)
        )

    def quantize(self, mode=None, **kwargs):
        raise NotImplementedError(
            f"Layer '{self.name}' is masked and cannot be quantized. Call "
            "`keras_mft.bake(model)` first, then quantize the baked model."
        )

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(
            f"Layer '{self.name}' is masked and cannot also use LoRA."
        )

    def _own_variables(self):
        variables = (self._kernel, self.bias, self.scores, self.removed_count)
        return [v for v in variables if v is not None]

    # The raw kernel and bias are saved under Keras' own keys ("0", "1"), and
    # the scores and removed count after them, so that `save_weights` /
    # `load_weights` restore the exact training state.
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
                "variables (kernel, bias if any, scores, removed_count) but the "
                f"weights file has {len(store.keys())}. Load weights saved from a model "
                "wrapped with the same `layers` and `targets`."
            )
        for index, variable in enumerate(variables):
            variable.assign(store[str(index)])

    def get_config(self):
        config = super().get_config()
        config["sparsity"] = self.sparsity
        config["scores_initializer"] = keras.initializers.serialize(
            self.scores_initializer
        )
        return config


@keras.saving.register_keras_serializable(package="keras_mft")
class MaskedDense(MaskedKernel, keras.layers.Dense):
    """A `keras.layers.Dense` whose frozen kernel is multiplied by a learned mask.

    It takes the arguments of `keras.layers.Dense` (`units`, ...), and:

    Args:
        sparsity: float in [0, 1), the fraction of kernel entries removed:
            exactly `floor(sparsity * kernel.size)` of them.
        scores_initializer: initializer of the float32 scores. Defaults to
            `RandomNormal(stddev=0.02)`, the paper's effective initialization.
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
        scores_initializer: initializer of the float32 scores. Defaults to
            `RandomNormal(stddev=0.02)`.
        **kwargs: the other arguments of `keras.layers.EinsumDense`.
    """


_MASKED_TWIN = {
    keras.layers.Dense: MaskedDense,
    keras.layers.EinsumDense: MaskedEinsumDense,
}


def is_masked(layer):
    return isinstance(layer, MaskedKernel)


def check_maskable(layer):
    """Raises unless `layer` is a built, plain, float `Dense`/`EinsumDense`."""
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
    if layer.lora_enabled:
        raise ValueError(
            f"Layer '{layer.name}' has LoRA enabled. Wrap a model without LoRA."
        )
    if layer.quantization_mode is not None:
        raise ValueError(
            f"Layer '{layer.name}' is quantized "
            f"({layer.quantization_mode}). Wrap the float model, then bake and "
            "quantize it."
        )


def mask_layer(layer, sparsity, initial_scores):
    """Turns a built `Dense`/`EinsumDense` into its masked twin, in place.

    Args:
        layer: a layer accepted by `check_maskable`.
        sparsity: float in [0, 1), the fraction of kernel entries removed.
        initial_scores: array shaped like the kernel.
    """
    check_maskable(layer)
    layer.__class__ = _MASKED_TWIN[type(layer)]
    layer.sparsity = check_sparsity(sparsity)
    layer.scores_initializer = keras.initializers.Zeros()
    layer.trainable = True
    layer._add_scores(layer.scores_initializer)
    layer.scores.assign(initial_scores)


def unmask_layer(layer):
    """Multiplies the hard mask into the kernel and restores the plain layer."""
    mask = ops.cast(layer.hard_mask(), layer._kernel.dtype)
    layer._kernel.assign(ops.multiply(layer._kernel.value, mask))
    del layer.scores
    del layer.removed_count
    del layer.sparsity
    del layer.scores_initializer
    layer.__class__ = next(
        base for base, twin in _MASKED_TWIN.items() if type(layer) is twin
    )
    for variable in layer.variables:
        variable.trainable = True
