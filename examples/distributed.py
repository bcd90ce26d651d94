"""
Title: Mask fine-tuning on several devices
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/04
Description: Data and model parallel MFT with Keras' distribution API on JAX,
checked against a single-device run.
Accelerator: None

Keras' distribution API (`keras.distribution`) shards a model over a mesh of
devices on the JAX backend. keras-mft adds nothing to it but one helper:
`keras_mft.extend_layout_map`, which gives each score variable the same layout
as its kernel, so each device computes the mask of the kernel slice it holds.

This guide runs on any machine: it asks XLA for 8 virtual CPU devices. On a
machine with 8 GPUs or TPU cores, drop the `XLA_FLAGS` line and the same code
uses them. It trains the same wrapped model three times (one device,
`DataParallel` over 8, `ModelParallel` on a 2 x 4 mesh) and checks that the
learned masks are identical. It runs in about a minute.
"""

import os

# The distribution API is implemented for JAX; this guide always uses it.
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import contextlib

import keras
import keras_hub
import numpy as np

import keras_mft

devices = keras.distribution.list_devices()
print(f"{len(devices)} devices: {devices}")

"""
## A model, built inside the distribution's scope

Variables are placed when they are created, so the model is built and
wrapped inside `distribution.scope()`: the scores that `wrap` adds are
placed then too. Training runs inside the scope as well, so that each batch
is split over the devices and the optimizer's variables are placed like the
scores they belong to. A small random Llama stands in for
`keras_hub.models.Llama3CausalLM.from_preset(...)`; its sizes divide evenly
over the mesh.
"""


def build_wrapped_model():
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=256,
        num_layers=4,
        num_query_heads=8,
        num_key_value_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
    )
    rng = np.random.default_rng(0)
    backbone.set_weights(
        [
            rng.normal(0.0, 0.1, w.shape) if w.ndim > 1 else np.ones(w.shape)
            for w in backbone.get_weights()
        ]
    )
    model = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    keras_mft.wrap(model, layers="1:3", sparsity=0.1, seed=0)
    # Plain SGD with a large step, so that 3 steps change many mask entries
    # (see the last section for Adam).
    model.compile(optimizer=keras.optimizers.SGD(100.0))
    return model


rng = np.random.default_rng(1)
tokens = rng.integers(0, 256, (16, 33))
x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((16, 32), bool)}
y = tokens[:, 1:]


def train(distribution):
    """Builds, wraps and trains the model under `distribution`; returns it."""
    with distribution.scope() if distribution else contextlib.nullcontext():
        model = build_wrapped_model()
        model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    return model


"""
## One device, then data parallel

`DataParallel` replicates every variable and splits each batch over the
devices; the gradients are summed across devices before the update.
"""

single = keras_mft.masks_of(train(None))
data_parallel = keras_mft.masks_of(train(keras.distribution.DataParallel(devices=devices)))

"""
## Model parallel, scores laid out like their kernels

KerasHub's `get_layout_map` shards each kernel over the `"model"` axis of
the mesh (and over `"batch"`, as in Gemma's training setup).
`extend_layout_map` adds a pattern for every score beside its kernel's
pattern, e.g. `transformer_layer.*feedforward_gate_dense.scores`.
"""

mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
layout_map = keras_hub.models.Llama3Backbone.get_layout_map(mesh)
layout_map = keras_mft.extend_layout_map(layout_map)
model_parallel_model = train(
    keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
)
model_parallel = keras_mft.masks_of(model_parallel_model)

print(f"{'variable':<58} sharding")
for variable in model_parallel_model.backbone.get_layer("transformer_layer_1").weights:
    if variable.path.endswith(
        ("query/kernel", "query/scores", "gate_dense/kernel", "gate_dense/scores")
    ):
        print(f"{variable.path:<58} {variable.value.sharding.spec}")

"""
## The same masks

A sharded run sums the gradients in another order, so the scores may differ
in their last bits; the masks, which only depend on the scores' order,
come out identical here.

With Adam the masks are not always identical: Adam divides each gradient
by its own running magnitude, so a gradient that is zero up to rounding
still moves its score by a full learning-rate step, in a direction set by
the rounding. Measured on this model: with Keras' AdamW (learning
rate 2e-5), 196 entries changed and none differed between the three runs;
with Adam at 0.01, 20 of 73,728 entries differed under `ModelParallel`
(and none under `DataParallel`).
"""

initial = keras_mft.masks_of(build_wrapped_model())
changed = sum(int(np.sum(single[p] != initial[p])) for p in single)
print(f"mask entries changed by training (one device): {changed}")
for name, masks in (("DataParallel", data_parallel), ("ModelParallel", model_parallel)):
    differ = sum(int(np.sum(single[p] != masks[p])) for p in single)
    total = sum(mask.size for mask in single.values())
    print(f"{name}: {differ} of {total:,} mask entries differ from one device")
    assert differ == 0

"""
## On several hosts

On a multi-host cluster (e.g. a TPU pod slice, or GPU nodes), start the
same script on every host and call `keras.distribution.initialize` before
building anything; `list_devices()` then returns the devices of all hosts,
and each host feeds its share of every batch:

```
keras.distribution.initialize(
    job_addresses="10.0.0.1:1234",  # the first host, reachable from all
    num_processes=4,                 # one per host
    process_id=int(os.environ["HOST_INDEX"]),
)
```

On Cloud TPU and on clusters that JAX detects (SLURM, Open MPI),
`keras.distribution.initialize()` without arguments finds these values
itself. The rest of the code is the same as above. Save masks
(`keras_mft.save_masks`) from one process only, e.g.
`if jax.process_index() == 0`.
"""
