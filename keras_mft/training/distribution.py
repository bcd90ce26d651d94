"""Several devices: `extend_layout_map` lays each score variable out like its
kernel, and `distribution_for` is the distribution `keras-mft train
--distribution` trains under.

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


def distribution_for(
    kind: str, backbone_class: type | None = None
) -> keras.distribution.DataParallel | keras.distribution.ModelParallel:
    """The Keras distribution over every device that `keras-mft train --distribution` uses.

    `"data"`: `keras.distribution.DataParallel`, each batch split over the
    devices. `"model"`: `keras.distribution.ModelParallel` on a mesh of
    1 x devices (`("batch", "model")`, as KerasHub's `get_layout_map`
    example), with `backbone_class.get_layout_map` extended for the scores.
    Build, wrap and train the model inside its `scope()`.

    Args:
        kind: `"data"` or `"model"`.
        backbone_class: the model's KerasHub backbone class (for `"model"`).

    Raises:
        ValueError: on a backend other than JAX (Keras distributes only on
            JAX), or for `"model"` with a backbone that has no layout map.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            f"Keras distributes a model over devices on JAX only, and this runs on "
            f"{keras.backend.backend()}: run it with KERAS_BACKEND=jax (`--backend jax`)."
        )
    devices = keras.distribution.list_devices()
    # Each process feeds its own share of every batch (`batch_share`): Keras'
    # sharding of a dataset needs a static batch size, which a generator lacks.
    if kind == "data":
        return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
    if kind != "model":
        raise ValueError(f"A distribution is 'data' or 'model', not {kind!r}.")
    if not hasattr(backbone_class, "get_layout_map"):
        raise ValueError(
            f"KerasHub has no layout map for {backbone_class.__name__} (it has one for Gemma, "
            "Llama, Llama 3 and Qwen), so it cannot be split by weights: use 'data'."
        )
    mesh = keras.distribution.DeviceMesh((1, len(devices)), ("batch", "model"), devices)
    layout_map = extend_layout_map(backbone_class.get_layout_map(mesh))
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False
    )


def batch_share() -> tuple[int, int]:
    """This process's share of each batch under the current distribution: `(index, count)`.

    Under `DataParallel` over several processes (`keras.distribution.initialize`),
    process `i` of `n` feeds the `i`-th of `n` equal slices of every batch, the
    rows its devices hold; otherwise a process feeds every row, (0, 1).
    """
    if isinstance(keras.distribution.distribution(), keras.distribution.DataParallel):
        import jax  # Keras distributes on JAX only

        return jax.process_index(), jax.process_count()
    return 0, 1
