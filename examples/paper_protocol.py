"""
Title: The MFT paper's protocol and its baselines, end to end
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/06
Description: Fine-tune SmolLM2-135M-Instruct on GSM8K, then compare MFT with
continued fine-tuning, random and L1-magnitude masks and LoRA.
Accelerator: None

The paper fully fine-tunes a model (FFT), then learns masks on the fine-tuned
model with the same data and loss, and compares with the baselines below, each
for the same number of steps. This guide runs every arm on the embedded
SmolLM2-135M-Instruct with 32 GSM8K problems, so that it finishes in about 8
minutes on 2 CPU cores. At this size the differences between arms are within
noise: the guide shows the workflow. `benchmarks/reproduce.py` runs the same
arms with 640 training problems, several seeds, MFT from magnitude scores and
paired statistics over 319 held-out problems (hours; results in
`docs/reproduction.md`).
"""

import dataclasses
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras_mft
from keras_mft import evaluation
from keras_mft import protocol

# Training and held-out GSM8K problems, and the tokens in a packed sequence.
TRAIN, HELD_OUT, SEQUENCE_LENGTH = 32, 16, 256

"""
## The base model and the data

Each arm loads the model again and sets the weights it starts from: those of
the base model, or those of the fine-tuned one. The data is tokenized once,
so each arm's model takes token ids: `model_with` sets `model.preprocessor =
None`, as `fit` would otherwise pass the ids to the preprocessor, which
expects text.
"""


def model_with(weights):
    """SmolLM2-135M-Instruct with `weights`, taking token ids."""
    model = keras_mft.smollm2_135m_instruct()
    model.preprocessor = None
    model.set_weights(weights)
    return model


base = keras_mft.smollm2_135m_instruct()
tokenizer = base.preprocessor.tokenizer
base_weights = base.get_weights()

train = {key: values[:TRAIN] for key, values in keras_mft.gsm8k("train").items()}
held_out = {key: values[:HELD_OUT] for key, values in keras_mft.gsm8k("held_out").items()}
train_data = keras_mft.instruction_dataset(tokenizer, train, sequence_length=SEQUENCE_LENGTH)
held_out_data = keras_mft.instruction_dataset(tokenizer, held_out, sequence_length=SEQUENCE_LENGTH)


def evaluate(model):
    """Held-out answer loss, and the share of answer tokens predicted exactly."""
    metrics = evaluation.response_loss(model, held_out_data)
    return {"held_out_loss": metrics["loss"], "token_accuracy": metrics["accuracy"]}


"""
## Stage 1: full fine-tuning

The paper's optimiser: AdamW (as PyTorch computes it) at 2e-5 with 3% warm-up
and linear decay, gradients clipped to a global norm of 1.0, the loss
averaged over the answer tokens, two epochs. Every arm is one
`keras_mft.train` run, on batches in the same seeded order; each arm below
trains one epoch.
"""

results = {"base": evaluate(base)}
fft = model_with(base_weights)
protocol.full_fine_tune(fft, train_data, epochs=2, verbose=0)
fft_weights = fft.get_weights()
results["FFT"] = evaluate(fft)

"""
## Stage 2: the arms

MFT on blocks 4-7 (the paper's best band for math), removing 10% of each
projection, with the paper's score budget (B = 0.47: `mask_fine_tune` picks
the learning rate that spends it in this run's steps); continued FFT for the same steps; the untrained random and
L1-magnitude masks of the same size; and LoRA (rank 64, alpha 16) from the
base model instead of the fine-tuned one, for FFT's steps.
"""

BAND = keras_mft.MaskConfig(layers="4:8", sparsity=0.1, seed=0)

model = model_with(fft_weights)
protocol.mask_fine_tune(model, train_data, BAND, epochs=1, verbose=0)
results["FFT + MFT"] = evaluate(model)

model = model_with(fft_weights)
protocol.full_fine_tune(model, train_data, epochs=1, verbose=0)
results["FFT + continued FFT"] = evaluate(model)

model = model_with(fft_weights)
protocol.untrained_mask(model, BAND)  # the random scores MFT starts from
results["FFT + random mask"] = evaluate(model)

model = model_with(fft_weights)
protocol.untrained_mask(model, dataclasses.replace(BAND, score_init="magnitude"))
results["FFT + L1 mask"] = evaluate(model)

model = model_with(base_weights)
protocol.lora_fine_tune(model, train_data, rank=64, alpha=16, epochs=2, verbose=0)
results["LoRA from base"] = evaluate(model)


"""
## Results
"""

print(evaluation.results_table(results))
evaluation.save_results(results, "protocol_results.json")
