"""
Title: Masks as adapters
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/06
Description: Learn two masks, save them as small files, load them onto one
freshly loaded model, switch between them, bake one into a plain KerasHub
model, and load it in Hugging Face transformers.
Accelerator: None

A learned MFT mask is to its base model what a LoRA adapter is: a small file
that turns the shared base model into the fine-tuned one. The file stores one
bit per masked weight and a fingerprint of each kernel it was learned on, so
it is refused by any other model. Several masks can sit on one base model and
be switched in a call, as PEFT switches adapters. This guide learns two masks
on SmolLM2-135M-Instruct (about 5 minutes in all on 2 CPU cores), then moves
them around. It needs `pip install transformers` for its last part.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras
import keras_hub
import numpy as np
import torch  # for transformers, below
import transformers

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


def learn_mask(problems, layers, seed):
    """A mask learned on `problems` over the blocks `layers`, at the paper's budget."""
    data = keras_mft.instruction_dataset(
        preprocessor.tokenizer, problems, sequence_length=SEQUENCE_LENGTH
    )
    model = keras_mft.wrap(load_model(), layers=layers, sparsity=0.1, seed=seed)
    # The paper's optimiser, schedule and loss, at its score budget B = 0.47.
    keras_mft.train(model, data, epochs=1, batch_size=8, verbose=2)
    return model, data[0]


"""
## Learn a mask

Blocks 4 to 7, 10% of each projection removed, one epoch on GSM8K problems
at the paper's score budget (`learn_mask` above). The data is tokenized with
the tokenizer of the model's preprocessor, so every model below takes token
ids: `load_model` sets `model.preprocessor =
None`, as `fit` would otherwise pass the ids to the preprocessor, which
expects text.
"""

preprocessor = keras_mft.smollm2_135m_instruct().preprocessor
problems = {key: values[:TRAIN] for key, values in keras_mft.gsm8k("train").items()}
model, x = learn_mask(problems, layers="4:8", seed=0)

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

Whoever receives the file loads the same base model and calls `load_masks`.
It reads the `MaskConfig` from the file, wraps the model the same way and
loads the masks: the logits are those of the model that
learned them.
"""

fresh = load_model()
keras_mft.load_masks(fresh, "math.mask")
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
## Load it in Hugging Face `transformers`

`export_to_transformers` writes the baked model as a `transformers`
checkpoint, with SmolLM2's tokenizer (its digit-splitting pre-tokenizer and
chat template included), which `transformers` loads without keras-mft
(`pip install transformers`; `keras-mft bake --format hf` does the same).
"""

keras_mft.export_to_transformers(baked, "math_hf")
hf_model = transformers.AutoModelForCausalLM.from_pretrained("math_hf", dtype=torch.float32)
hf_tokenizer = transformers.AutoTokenizer.from_pretrained("math_hf")
with torch.no_grad():
    hf_logits = hf_model(torch.tensor(np.asarray(batch["token_ids"]))).logits.numpy()
# Positions after the last real token differ only in padding: compare the others.
real = np.asarray(batch["padding_mask"], bool)
print(
    "transformers vs learned, largest logit difference:",
    np.max(np.abs(hf_logits[real] - learned[real])),
)
print("transformers' tokens of '2023':", hf_tokenizer("2023")["input_ids"])

"""
## Several masks on one model

A second mask, on other blocks (0 to 3) and another task: the same problems,
answered with the final number only. Loaded with a `name`, each file's
masks are kept beside the others (one bit per weight, in host memory), and
`use_masks` switches between them without reloading anything: each switch
gives exactly the logits of that mask baked alone, and `use_masks(model,
None)` gives the base model exactly. Masks of different kernels (here other
blocks) can be used together; masks of the same kernel are refused.
"""

answers = [response.split("####")[-1].strip() for response in problems["responses"]]
short, _ = learn_mask({"prompts": problems["prompts"], "responses": answers}, "0:4", seed=1)
keras_mft.save_masks(short, "answer.mask")

host = load_model()
base = logits(host, batch)
keras_mft.load_masks(host, "math.mask", name="math")
keras_mft.load_masks(host, "answer.mask", name="answer")
print("loaded masks:", keras_mft.mask_names(host))
keras_mft.use_masks(host, "math")
print("math vs learned, largest logit difference:", np.max(np.abs(logits(host, batch) - learned)))
keras_mft.use_masks(host, "answer")
answer_only = logits(keras_mft.bake(keras_mft.load_masks(load_model(), "answer.mask")), batch)
print(
    "answer vs its mask baked alone, largest logit difference:",
    np.max(np.abs(logits(host, batch) - answer_only)),
)
keras_mft.use_masks(host, None)
print(
    "no mask vs base model, largest logit difference:", np.max(np.abs(logits(host, batch) - base))
)
keras_mft.use_masks(host, ["math", "answer"])  # blocks 4-7 and blocks 0-3
print("both masks in use; changed logits:", np.max(np.abs(logits(host, batch) - base)) > 0)

"""
`bake` keeps the masks in use and drops the others: the model becomes the
plain KerasHub model of the answer mask alone.
"""

keras_mft.use_masks(host, "answer")
keras_mft.bake(host)
print(
    "baked answer vs its mask, largest logit difference:",
    np.max(np.abs(logits(host, batch) - answer_only)),
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
    keras_mft.load_masks(other, "math.mask")
except ValueError as error:
    print("refused:", error)
print("trainable variables of the refused model:", len(other.trainable_variables))
