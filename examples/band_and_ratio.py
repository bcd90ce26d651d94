"""
Title: Choosing the band of blocks and the sparse ratio
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/06
Description: Sweep which four decoder blocks MFT masks and how much of each
matrix it removes, and plot the held-out loss of each choice.
Accelerator: None

MFT masks a band of 4 consecutive decoder blocks and removes a fraction r of
each of their projection matrices. The paper found the best band depends on
the task (on LLaMA2-7B: blocks 4-7 for math, 20-23 for code, 0-3 for
instruction following) and kept r = 0.1. This guide measures both choices on
SmolLM2-135M-Instruct (30 blocks) with GSM8K problems: for each setting, the
held-out answer loss with the untrained random mask and with the learned
mask. It takes about 9 minutes on 2 CPU cores. `docs/reproduction.md`
compares MFT with its baselines at a larger scale, at blocks 4-7 and ratio 0.1.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

from matplotlib.figure import Figure

import keras_mft
from keras_mft import evaluation

# Training and held-out GSM8K problems, and the tokens in a packed sequence.
TRAIN, HELD_OUT, SEQUENCE_LENGTH = 48, 24, 256
RATIOS = [0.05, 0.1, 0.2]  # on blocks 4-7


def load_model():
    """A fresh base model that takes token ids (no preprocessor), to train."""
    model = keras_mft.smollm2_135m_instruct()
    model.preprocessor = None
    return model


"""
## Data and the unmasked model

The data is tokenized once, with the tokenizer of the model's preprocessor.
The models that train below take these token ids, so `load_model` sets
`model.preprocessor = None`: `fit` would otherwise pass the ids to the
preprocessor, which expects text.
"""

model = keras_mft.smollm2_135m_instruct()
tokenizer = model.preprocessor.tokenizer
train = {key: values[:TRAIN] for key, values in keras_mft.gsm8k("train").items()}
held_out = {key: values[:HELD_OUT] for key, values in keras_mft.gsm8k("held_out").items()}
train_data = keras_mft.instruction_dataset(tokenizer, train, sequence_length=SEQUENCE_LENGTH)
held_out_data = keras_mft.instruction_dataset(tokenizer, held_out, sequence_length=SEQUENCE_LENGTH)
unmasked = evaluation.response_loss(model, held_out_data)["loss"]
print(f"unmasked model: held-out loss {unmasked:.4f}")


def mask_fine_tune(layers, sparsity):
    """Held-out loss with the initial random mask and with the learned one."""
    model = keras_mft.wrap(load_model(), layers=layers, sparsity=sparsity, seed=0)
    random_mask = evaluation.response_loss(model, held_out_data)["loss"]
    initial = keras_mft.masks_of(model)
    keras_mft.train(model, train_data, epochs=1, batch_size=8, verbose=0)
    learned = evaluation.response_loss(model, held_out_data)["loss"]
    print(
        f"blocks {layers:>5}, ratio {sparsity:<4}: random mask {random_mask:.4f}, "
        f"learned mask {learned:.4f}"
    )
    return {
        "random mask": random_mask,
        "learned mask": learned,
        "initial masks": initial,
        "model": model,
    }


"""
## Which band?

Three bands of the 30 blocks: the first four, the paper's best band for math
(blocks 4-7), and the last four. Each removes 10% of every projection.
"""

blocks = model.backbone.num_layers  # 30
bands = {band: mask_fine_tune(band, 0.1) for band in ["0:4", "4:8", f"{blocks - 4}:{blocks}"]}

"""
## Which ratio?

Blocks 4-7, removing 5% to 20% of each matrix. Removing more costs more at
first (the random mask); whether learning recovers it is what we measure.
"""

ratios = {ratio: bands["4:8"] if ratio == 0.1 else mask_fine_tune("4:8", ratio) for ratio in RATIOS}

"""
## The plots
"""


def plot_sweep(results, xlabel, path):
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    labels = [str(key) for key in results]
    for arm, marker in (("random mask", "x"), ("learned mask", "o")):
        axes.plot(labels, [result[arm] for result in results.values()], marker=marker, label=arm)
    axes.axhline(unmasked, color="gray", linestyle="--", label="unmasked")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("held-out answer loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    print("wrote", path)


plot_sweep(bands, "masked blocks (sparse ratio 0.1)", "band_sweep.png")
plot_sweep(ratios, "sparse ratio (blocks 4-7)", "ratio_sweep.png")

"""
Where did the learned masks of blocks 4-7 move, and how do the scores of kept
and removed weights compare? `keras_mft.plot` draws both.
"""

default = bands["4:8"]
keras_mft.plot.mask_change(
    default["initial masks"], keras_mft.masks_of(default["model"]), "mask_change.png"
)
keras_mft.plot.score_histogram(
    keras_mft.scores_of(default["model"]), keras_mft.masks_of(default["model"]), "scores.png"
)
print("wrote mask_change.png, scores.png")

"""
## What one run showed

On JAX, with the settings above (48 training problems, one epoch of 4 steps,
24 held-out problems; the unmasked model's held-out loss is 1.2980):

| blocks | ratio | random mask | learned mask |
|---|---|---|---|
| 0:4 | 0.1 | 1.8887 | 1.4455 |
| 4:8 | 0.1 | 1.3832 | 1.2467 |
| 26:30 | 0.1 | 1.6565 | 12.8716 |
| 4:8 | 0.05 | 1.3123 | 1.1967 |
| 4:8 | 0.2 | 1.5053 | 1.4381 |

![Held-out loss by band](../images/guide_band_sweep.png)

![Held-out loss by ratio](../images/guide_ratio_sweep.png)

Removing weights from the first or the last blocks costs more than from
blocks 4-7, and on blocks 0-3 and 4-7 four steps of learning recover much of
the cost of the random mask: on blocks 4-7 the learned masks end below the
unmasked model at ratios 0.05 and 0.1. On the last four blocks the learned
mask ends far above its random start. Spending the paper's score budget in
four steps makes each step large: the first moves a score by about 0.19 of
the initial scores' spread, more than the 0.13 that separates the 10%
threshold from zero, so most of a mask can change at once. One run on 24
problems is not evidence, and no larger sweep has been run:
`docs/reproduction.md` tests blocks 4-7 at ratio 0.1 only.
"""
