"""`gradient_checkpointing`: decoder blocks that recompute their activations.

A training step keeps every block's activations for the backward pass; with
gradient checkpointing (Hugging Face's `gradient_checkpointing_enable`, Keras'
`keras.remat`) each block keeps only its input and computes the rest again
when its gradients are needed: less memory, more time.

Keras' own `RematScope` cannot be used on KerasHub's blocks as they are:
`keras.remat` takes tensors only, and a block is called with `None`s and
Python flags (`training`, masks and caches left out). So each block's class
becomes, for the run, a subclass (as `wrap` does for kernels) whose `call`
passes the tensors to `keras.remat` and keeps the rest in a closure. The
block's variables go in as arguments too, read inside a nested
`keras.StatelessScope`: the masked layers update their selection state
(`last_threshold`) during the forward pass, and on JAX an update made inside
`jax.checkpoint` must come out as an output, not leak from it.
"""

import contextlib

import keras

from keras_mft.masking import architectures

_CHECKPOINTED = {}  # block class -> its checkpointed subclass


def _is_tensor(value):
    return value is not None and not isinstance(value, (bool, int, float, str))


def _checkpointed(base):
    if base not in _CHECKPOINTED:

        class Checkpointed(base):
            def call(self, *args, **kwargs):
                names = [name for name, value in kwargs.items() if _is_tensor(value)]
                fixed = {name: value for name, value in kwargs.items() if name not in names}
                variables = self.variables

                def forward(*values):
                    given, values = values[: len(args)], values[len(args) :]
                    tensors, values = values[: len(names)], values[len(names) :]
                    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                        outputs = base.call(self, *given, **fixed, **dict(zip(names, tensors)))
                    # What the forward pass assigned (selection state, seeds), as outputs.
                    updates = [scope.get_current_value(v) for v in variables]
                    return outputs, [v if u is None else u for v, u in zip(values, updates)]

                # A copy of what the step may assign: PyTorch refuses a
                # recomputation whose input changed in place since.
                values = [v.value if v.trainable else keras.ops.copy(v.value) for v in variables]
                tensors = [kwargs[name] for name in names]
                outputs, updates = keras.remat(forward)(*args, *tensors, *values)
                for variable, value, update in zip(variables, values, updates):
                    if not variable.trainable and update is not value:
                        variable.assign(update)
                return outputs

        Checkpointed.__name__ = Checkpointed.__qualname__ = base.__name__
        _CHECKPOINTED[base] = Checkpointed
    return _CHECKPOINTED[base]


@contextlib.contextmanager
def gradient_checkpointing(model: keras.Model):
    """Within the block, `model`'s decoder blocks recompute their activations
    in the backward pass instead of keeping them.

    The losses, gradients and masks are the same; a training step takes less
    memory and more time. The blocks are plain KerasHub blocks again after
    the block (so the model saves as before). `keras_mft.train(...,
    gradient_checkpointing=True)` trains within it.

    Args:
        model: a KerasHub `CausalLM` or `Backbone`, wrapped or not.

    Example:

    ```python
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2")
    with keras_mft.gradient_checkpointing(model):
        type(model.backbone.transformer_layers[0]).__module__  # 'keras_mft...'
    type(model.backbone.transformer_layers[0]).__module__  # 'keras_hub...'
    ```
    """
    blocks = architectures.backbone_of(model).transformer_layers
    bases = [type(block) for block in blocks]
    for block, base in zip(blocks, bases):
        block.__class__ = _checkpointed(base)
    try:
        yield model
    finally:
        for block, base in zip(blocks, bases):
            block.__class__ = base
