"""
Title: Masks as adapters
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/04
Description: Learn a mask, save it as a small file, share it, apply it to a
freshly loaded model, and bake it into a plain KerasHub model.
Accelerator: None

A learned MFT mask is to its base model what a LoRA adapter is: a small file
that turns the shared base model into the fine-tuned one. The file stores one
bit per masked weight and a fingerprint of each kernel it was learned on, so
it is refused by any other model. This guide learns a mask on
SmolLM2-135M-Instruct (about 3 minutes in all on 2 CPU cores), then moves it
around.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras
import keras_hub
import numpy as np

import keras_mft

# GSM8K training problems, and the tokens in a packed sequence.
TRAIN, SEQUENCE_LENGTH = 64, 256


def load_model():
    """The base model, taking token ids (no preprocessor)."""
    model = keras_mft.smollm2_135m_instruct()
    model.preprocessor = None
    return model


def logits(model, batch):
    return keras.ops.convert_to_numpy(model(batch))


"""
## Learn a mask

Blocks 4 to 7, 10% of each projection removed, one epoch on GSM8K problems.
The data is tokenized once, with the tokenizer of the model's preprocessor,
so every model below takes token ids: `load_model` sets `model.preprocessor =
None`, as `fit` would otherwise pass the ids to the preprocessor, which
expects text.
"""

preprocessor = keras_mft.smollm2_135m_instruct().preprocessor
problems = {key: values[:TRAIN] for key, values in keras_mft.gsm8k("train").items()}
x, y, sample_weight = keras_mft.instruction_dataset(
    preprocessor.tokenizer, problems, sequence_length=SEQUENCE_LENGTH
)
model = keras_mft.wrap(load_model(), layers="4:8", sparsity=0.1, seed=0)
steps = keras_mft.protocol.total_steps((x, y, sample_weight), batch_size=8, epochs=1)
learning_rate = keras_mft.score_budget.learning_rate_for_budget(0.47, steps)
model.compile(
    optimizer=keras_mft.protocol.paper_optimizer(steps, learning_rate), loss=keras_mft.paper_loss()
)
model.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=1, verbose=2)

batch = {key: value[:2] for key, value in x.items()}
learned = logits(model, batch)

"""
## Save and inspect the file

`save_masks` writes the masks; `describe_masks` reads a file without a model.
One bit per weight makes the file 32 times smaller than the float32 weights
of the same blocks.
"""

keras_mft.save_masks(model, "math.mask")
records = keras_mft.describe_masks("math.mask")
for record in records[:3]:
    print(record)
masked_weights = sum(int(np.prod(record["shape"])) for record in records)
print(f"{len(records)} masked kernels, {masked_weights:,} weights")
print(
    f"mask file: {os.path.getsize('math.mask'):,} bytes; "
    f"those weights in float32: {4 * masked_weights:,} bytes"
)

"""
## Apply it to a freshly loaded model

Whoever receives the file loads the same base model and calls `apply_masks`.
It reads the blocks, projections and sparsities from the file, wraps the model
the same way and loads the masks: the logits are those of the model that
learned them.
"""

fresh = load_model()
keras_mft.apply_masks(fresh, "math.mask")
print(
    "applied vs learned, largest logit difference:", np.max(np.abs(logits(fresh, batch) - learned))
)

"""
## Bake it

`bake` multiplies the masks into the kernels and removes the scores: the
result is a plain KerasHub model, which saves and loads without any trace of
keras-mft's layers.
"""

baked = keras_mft.bake(fresh)
print("baked vs learned, largest logit difference:", np.max(np.abs(logits(baked, batch) - learned)))
baked.preprocessor = preprocessor
keras_mft.save_preset(baked, "math_preset")
reloaded = keras_hub.models.Llama3CausalLM.from_preset("math_preset", preprocessor=None)
print(
    "reloaded preset vs learned, largest logit difference:",
    np.max(np.abs(logits(reloaded, batch) - learned)),
)

"""
## A mask only fits its own model

Change one weight of a fresh model, and the file is refused before anything
is changed: the model stays unwrapped.
"""

other = load_model()
query = "transformer_layer_4/self_attention/query/kernel"
kernel = next(v for v in other.weights if v.path == query)
kernel.assign(kernel * 1.01)
try:
    keras_mft.apply_masks(other, "math.mask")
except ValueError as error:
    print("refused:", error)
print("trainable variables of the refused model:", len(other.trainable_variables))
