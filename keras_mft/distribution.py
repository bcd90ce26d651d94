"""`extend_layout_map`: lay each score variable out like its kernel.

Keras' distribution API (JAX backend) places each variable by matching its
path against a `keras.distribution.LayoutMap`. KerasHub's
`get_layout_map(device_mesh)` (Llama, Gemma, Qwen, ...) has a pattern for
every projection kernel, e.g. `transformer_layer.*feedforward_gate_dense.kernel`.
A masked layer adds `.../feedforward_gate_dense/scores`, shaped like the
kernel; without a pattern of its own it would be replicated on every device.
"""

import re

_KERNEL_AT_END = re.compile(r"kernel(\$?)$")


def extend_layout_map(layout_map):
    """Adds a pattern for the scores beside each kernel pattern of `layout_map`.

    Every key that ends in `kernel` gets a twin ending in `scores` with the
    same layout, so a score variable is sharded exactly like its kernel and
    the mask is computed where the kernel lives. Call it before the scores
    are created, i.e. before `keras_mft.wrap`, inside the distribution's
    scope.

    Args:
        layout_map: a `keras.distribution.LayoutMap`, e.g. from
            `keras_hub.models.LlamaBackbone.get_layout_map(device_mesh)`.

    Returns:
        The same `LayoutMap`, extended in place.

    Example:

    ```python
    devices = ["cpu:0"]  # on JAX: keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
    layout_map = keras_hub.models.LlamaBackbone.get_layout_map(mesh)
    layout_map = keras_mft.extend_layout_map(layout_map)
    layout_map["transformer_layer_3/self_attention/query/scores"].axes
    # ('model', 'batch', None), as for .../query/kernel
    ```
    """
    # `key in layout_map` matches keys as patterns; the set holds the keys.
    keys = set(layout_map)
    additions = {}
    for key in keys:
        if _KERNEL_AT_END.search(key):
            scores_key = _KERNEL_AT_END.sub(r"scores\1", key)
            if scores_key not in keys:
                additions[scores_key] = layout_map[key]
    for key, layout in additions.items():
        layout_map[key] = layout.axes
    return layout_map
