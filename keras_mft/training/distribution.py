"""`extend_layout_map`: lay each score variable out like its kernel.

KerasHub's `get_layout_map(device_mesh)` has a pattern for every projection
kernel; without one of their own, the scores would be replicated on every
device.
"""

import re

import keras

_KERNEL_AT_END = re.compile(r"kernel(\$?)$")


def extend_layout_map(layout_map: keras.distribution.LayoutMap) -> keras.distribution.LayoutMap:
    """Adds a pattern for the scores beside each kernel pattern of `layout_map`.

    Every key that ends in `kernel` gets a twin ending in `scores`, so the
    scores are sharded like their kernel. Call it before `keras_mft.wrap`,
    inside the distribution's scope.

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
