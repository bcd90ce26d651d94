"""
Title: Mask Fine-Tuning in a few minutes
Description: Fine-tune a small Llama, learn a mask over four of its blocks,
save the mask, and bake a plain KerasHub model.

Mask Fine-Tuning (MFT) starts from a model that is already fine-tuned, freezes
every weight, and learns which ~10% of the weights of a few decoder blocks to
remove, with the same data and loss. This guide runs the whole loop on a small
randomly initialized Llama so that it needs no download; with a real model,
replace the first step by `keras_hub.models.Llama3CausalLM.from_preset(...)`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras
import keras_hub
import numpy as np

import keras_mft

keras.utils.set_random_seed(0)

"""
## A small Llama and some data

The task: continue a sequence that counts upwards, modulo the vocabulary. The
labels are the inputs shifted by one token, as for any causal language model.
"""

VOCABULARY_SIZE, SEQUENCE_LENGTH = 32, 16
backbone = keras_hub.models.Llama3Backbone(
    vocabulary_size=VOCABULARY_SIZE,
    num_layers=6,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=64,
    intermediate_dim=128,
)
model = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)

rng = np.random.default_rng(0)
starts = rng.integers(0, VOCABULARY_SIZE, size=(256, 1))
tokens = (starts + np.arange(SEQUENCE_LENGTH + 1)) % VOCABULARY_SIZE
inputs = {
    "token_ids": tokens[:, :-1],
    "padding_mask": np.ones((256, SEQUENCE_LENGTH), bool),
}
labels = tokens[:, 1:]

"""
## Step 1: full fine-tuning

MFT is applied to a model that has already been fine-tuned on the task.
"""

model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.0))
model.fit(inputs, labels, batch_size=32, epochs=8, verbose=2)
loss_before = model.evaluate(inputs, labels, batch_size=64, verbose=0)[0]

"""
## Step 2: wrap, then learn the masks

`wrap` freezes the model and masks the seven projections of blocks 2 to 5,
removing 10% of each matrix. The scores start as small random numbers, so the
first mask is a random prune; training learns which weights to remove instead. It compiles the model with the paper's optimiser
(AdamW, learning rate 2e-5); on this small problem a larger step is faster,
so we recompile.
"""

model = keras_mft.wrap(model, layers="2:6", sparsity=0.1, seed=0)
print("trainable variables:", len(model.trainable_variables))
loss_pruned = model.evaluate(inputs, labels, batch_size=64, verbose=0)[0]
model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.0))
model.fit(inputs, labels, batch_size=32, epochs=3, verbose=2)
loss_after = model.evaluate(inputs, labels, batch_size=64, verbose=0)[0]
print(f"loss of the fine-tuned model:         {loss_before:.4f}")
print(f"with the first (random) 10% masks:    {loss_pruned:.4f}")
print(f"with the learned 10% masks:           {loss_after:.4f}")

"""
## Step 3: share the masks, bake the model

A mask file stores one bit per masked weight. `bake` multiplies the masks into
the kernels and gives back a plain KerasHub model, which saves and loads
without keras-mft.
"""

keras_mft.save_masks(model, "quickstart.mask")
print("mask file:", os.path.getsize("quickstart.mask"), "bytes")
model = keras_mft.bake(model)
model.save_to_preset("quickstart_preset")
reloaded = keras_hub.models.CausalLM.from_preset("quickstart_preset")
print("baked loss:", reloaded.evaluate(inputs, labels, batch_size=64, verbose=0)[0])
