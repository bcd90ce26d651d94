"""
Title: The MFT paper's protocol and its baselines, end to end
Description: Fine-tune, then compare MFT with continued fine-tuning, random and
L1-magnitude masks and LoRA, on the same data and step budget.

The paper fully fine-tunes a model (FFT), then learns masks on the fine-tuned
model with the same data and loss, and compares with the baselines below. This
guide runs the whole protocol on a small Llama trained from scratch on a toy
arithmetic task, so that it needs no download and finishes in a few minutes
on a laptop CPU. The numbers say nothing about large models: they show the
workflow. `KERAS_MFT_FAST=1` shrinks everything for a smoke test.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras
import keras_hub
import numpy as np
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

import keras_mft
from keras_mft import evaluation
from keras_mft import protocol

FAST = os.environ.get("KERAS_MFT_FAST") == "1"
keras.utils.set_random_seed(0)

"""
## Data: sums with the answer after `####`

Prompts ask for a sum; responses show the working and end with `#### N`, as
GSM8K does, so greedy exact-match can score them. The loss is on the response
tokens only.
"""


def arithmetic(count, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 50, size=(2, count))
    return {
        "prompts": [f"What is {x} + {y}?" for x, y in zip(a, b)],
        "responses": [f"{x} + {y} = {x + y}.\n#### {x + y}" for x, y in zip(a, b)],
    }


# A byte-level tokenizer: every character is a token, plus the ChatML markers.
vocabulary = {
    token: i for i, token in enumerate(["<|im_start|>", "<|im_end|>"] + bytes_to_unicode()[1])
}
merges = ["Ġ =", "Ġ +"]
for merge in merges:
    vocabulary[merge.replace(" ", "")] = len(vocabulary)
tokenizer = keras_hub.tokenizers.BytePairTokenizer(vocabulary=vocabulary, merges=merges)

train_records = arithmetic(64 if FAST else 1024, seed=0)
held_out = arithmetic(16 if FAST else 128, seed=1)
train = keras_mft.instruction_dataset(tokenizer, train_records, sequence_length=64)
held_out_data = keras_mft.instruction_dataset(tokenizer, held_out, sequence_length=64)
EPOCHS = 1 if FAST else 2
SETTINGS = {"epochs": EPOCHS, "batch_size": 16, "verbose": 0}

"""
## The model and the arms

Each arm starts from a copy of the same weights.
"""

backbone_config = dict(
    vocabulary_size=tokenizer.vocabulary_size(),
    num_layers=4 if FAST else 8,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=32 if FAST else 128,
    intermediate_dim=64 if FAST else 256,
)


def model_with(weights=None):
    backbone = keras_hub.models.LlamaBackbone(**backbone_config)
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    if weights is not None:
        model.set_weights(weights)
    return model


def evaluate(model):
    metrics = evaluation.response_loss(model, held_out_data)
    match = evaluation.exact_match(
        model, tokenizer, held_out["prompts"], held_out["responses"],
        template="chatml", end_token="<|im_end|>", max_new_tokens=8 if FAST else 24,
        batch_size=64,
    )
    return {"held_out_loss": metrics["loss"], "exact_match": match["exact_match"]}


BAND = {"layers": "1:3" if FAST else "2:6", "sparsity": 0.1}
results = {}

base = model_with()
base_weights = base.get_weights()
results["base"] = evaluate(base)

# Stage 1: full fine-tuning, at a learning rate suited to training from scratch.
fft = model_with(base_weights)
protocol.full_fine_tune(fft, train, learning_rate=3e-3, **{**SETTINGS, "epochs": 3 * EPOCHS})
fft_weights = fft.get_weights()
results["FFT"] = evaluate(fft)

# Stage 2: the arms, each for the same number of steps.
STAGE_2 = {**SETTINGS, "learning_rate": 1e-3}
model = model_with(fft_weights)
protocol.mask_fine_tune(model, train, seed=0, **BAND, **STAGE_2)
results["FFT + MFT"] = evaluate(model)

model = model_with(fft_weights)
protocol.full_fine_tune(model, train, **STAGE_2)
results["FFT + continued FFT"] = evaluate(model)

model = model_with(fft_weights)
protocol.untrained_mask(model, "random", seed=0, **BAND)
results["FFT + random mask"] = evaluate(model)

model = model_with(fft_weights)
protocol.untrained_mask(model, "magnitude", **BAND)
results["FFT + L1 mask"] = evaluate(model)

model = model_with(base_weights)
protocol.lora_fine_tune(model, train, rank=16, alpha=4, **{**STAGE_2, "epochs": 3 * EPOCHS})
results["LoRA from base"] = evaluate(model)

model = model_with(base_weights)
protocol.mask_fine_tune(model, train, seed=0, **BAND, **STAGE_2)
results["MFT from base"] = evaluate(model)

"""
## Results
"""

print(evaluation.results_table(results))
evaluation.save_results(results, "protocol_results.json")
