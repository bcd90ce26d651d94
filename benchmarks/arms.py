"""The models, training arms and timing helpers that the benchmarks share.

Models (`--model`):

| name            | what                                                        | band  | batch x length |
|-----------------|-------------------------------------------------------------|-------|----------------|
| `smollm2`       | the embedded SmolLM2-135M-Instruct (30 blocks, hidden 576)   | `4:8` | 4 x 256        |
| `llama7b_slice` | 2 LLaMA-7B blocks (hidden 4096, MLP 11008, 32 heads), random | `0:2` | 1 x 512        |
| `tiny`          | a 4-block random Llama, for the scripts' own tests          | `1:3` | 2 x 16         |

Arms: `mft` (`keras_mft.wrap` on the band, all 7 projections), `fft` (every
weight), `fft_band` (every weight of the band's blocks), `lora8` / `lora64`
(Keras LoRA, rank 8 / 64, on the band's 7 projections; the same layers MFT
masks), and for the memory benchmark `norms` (only the band's RMS-norm
scales: the same backward pass through the band, with no weight-sized
gradient). `mft_fixed` is MFT with every mask held at its first value: the
same masked kernels and straight-through gradient with no selection at all,
so its time is the least that any way of selecting the masks could reach.
Every arm trains with AdamW (learning rate 2e-5, weight decay 0) and
KerasHub's causal-LM loss, through Keras' own compiled train step.
"""

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import keras_hub
import numpy as np
from keras import ops

import keras_mft
from keras_mft.masking import architectures
from keras_mft.masking.config import block_indices
from keras_mft.masking.wrapping import masked_layers_of

# Full FFT needs the most memory, so it runs last.
ARMS = ("mft", "fft_band", "lora8", "lora64", "fft")
LORA_RANKS = {"lora8": 8, "lora64": 64}
MODELS = {
    "smollm2": {"band": "4:8", "batch_size": 4, "sequence_length": 256},
    "llama7b_slice": {"band": "0:2", "batch_size": 1, "sequence_length": 512},
    "tiny": {"band": "1:3", "batch_size": 2, "sequence_length": 16},
}


def build_model(name, num_layers=None):
    """A fresh `Llama3CausalLM` without preprocessor; the same weights each call."""
    if name == "smollm2":
        backbone = keras_mft.smollm2_135m_instruct().backbone
    else:
        shape = {
            "llama7b_slice": dict(
                vocabulary_size=32000,
                num_layers=2,
                hidden_dim=4096,
                intermediate_dim=11008,
                num_query_heads=32,
                num_key_value_heads=32,
            ),
            "tiny": dict(
                vocabulary_size=256,
                num_layers=4,
                hidden_dim=64,
                intermediate_dim=128,
                num_query_heads=4,
                num_key_value_heads=2,
            ),
        }[name]
        if num_layers is not None:
            shape["num_layers"] = num_layers
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.Llama3Backbone(**shape, tie_word_embeddings=True)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)


def band_blocks(model, band):
    blocks = model.backbone.transformer_layers
    return [blocks[index] for index in block_indices(band, len(blocks))]


def prepare(model, arm, band):
    """Makes `arm`'s weights trainable (and masks or LoRA layers) in place."""
    if arm in ("mft", "mft_fixed"):
        keras_mft.wrap(model, layers=band, seed=0)
        if arm == "mft_fixed":
            for layer in masked_layers_of(model):
                hold_mask(layer)
    elif arm == "fft":
        for layer in model._flatten_layers():
            layer.trainable = True
    else:
        # Only variable flags count once the model itself is trainable.
        model.trainable = True
        for layer in model._flatten_layers(include_self=False):
            layer.trainable = False
        for block in band_blocks(model, band):
            projections = architectures.projections_of(model.backbone, block).values()
            if arm == "fft_band":
                block.trainable = True
            elif arm == "norms":
                block.trainable = True
                for layer in projections:
                    layer.trainable = False
            else:
                for layer in projections:
                    layer.trainable = True
                    layer.enable_lora(LORA_RANKS[arm])
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=2e-5, weight_decay=0.0),
        weighted_metrics=[],
    )
    return model


def hold_mask(layer):
    """Keeps a masked layer's current mask, in a boolean variable, for good."""
    keep = layer.keep_mask()
    layer._tracker.unlock()
    held = layer.add_weight(
        name="held_keep",
        shape=keep.shape,
        dtype="bool",
        trainable=False,
        initializer="zeros",
    )
    layer._tracker.lock()
    held.assign(keep)
    layer.keep_mask = lambda: ops.convert_to_tensor(held)


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def masked_count(model, band):
    """How many kernel entries MFT masks on the band (the 7 projections)."""
    return sum(
        int(np.prod(layer.kernel.shape))
        for block in band_blocks(model, band)
        for layer in architectures.projections_of(model.backbone, block).values()
    )


def batch(vocabulary_size, batch_size, sequence_length, seed=0):
    """`(x, y, sample_weight)` of random tokens, as `train_on_batch` takes them."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocabulary_size, (batch_size, sequence_length + 1))
    x = {
        "token_ids": tokens[:, :-1].astype("int32"),
        "padding_mask": np.ones((batch_size, sequence_length), bool),
    }
    return x, tokens[:, 1:].astype("int32"), np.ones((batch_size, sequence_length), "float32")


def median_seconds(step, warmup, repeats):
    """Median wall time of `step()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


TRAIN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")


def train_step_in_child(
    model_name, arm, warmup, steps, sequence_length=None, dtype="float32", extra_env=None
):
    """`(row, peak resident bytes)` of one arm timed by `train_step.py` in a
    fresh child process (weights in `dtype`; `extra_env` added to its environment)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "row.json")
        command = [
            sys.executable,
            TRAIN_STEP,
            "--model",
            model_name,
            "--arms",
            arm,
            "--warmup",
            str(warmup),
            "--steps",
            str(steps),
            "--dtype",
            dtype,
            "--json",
            path,
        ]
        if sequence_length is not None:
            command += ["--sequence-length", str(sequence_length)]
        child = subprocess.Popen(
            command,
            env={**os.environ, **(extra_env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"The {arm} arm failed:\n{stderr[-3000:]}")
        with open(path, encoding="utf-8") as file:
            (row,) = json.load(file)
    return row, usage.ru_maxrss * 1024


def release():
    """Frees the models no longer referenced, before the next arm is built."""
    keras.backend.clear_session()
    gc.collect()


def current_rss_bytes():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
