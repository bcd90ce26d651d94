"""Hugging Face `transformers` checkpoints: a baked model exported as one, and a
check on one that KerasHub loads.

KerasHub's `CausalLM.export_to_transformers` writes the weights and config of
a Llama3 (and other) backbone. The tokenizer is exported by its own
`export_to_transformers(path)`: KerasHub's tokenizers have one, and a
tokenizer it does not know brings its own (the embedded SmolLM2's does).
KerasHub loads the blocks that a checkpoint's `config.json` declares and
drops any others without a word: `check_checkpoint_blocks` refuses that.
"""

import glob
import os
import re

import keras
import safetensors

from keras_mft.masking.wrapping import is_wrapped


def export_to_transformers(model: keras.Model, directory: str | os.PathLike) -> None:
    """Writes a baked KerasHub causal LM as a `transformers` checkpoint.

    The directory then loads with `transformers.AutoModelForCausalLM` and
    `AutoTokenizer`, without keras-mft. The removed weights are stored as
    zeros.

    Args:
        model: a KerasHub `CausalLM` after `keras_mft.bake`, with its
            preprocessor (for the tokenizer).
        directory: the directory to write; it must not exist or be empty.

    Example:

    ```python
    # Or keras_mft.smollm2_135m_instruct() with a mask file learned on it.
    model = keras_mft.bake(keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2"))
    keras_mft.export_to_transformers(model, "baked_hf")
    # transformers.AutoModelForCausalLM.from_pretrained("baked_hf")
    ```
    """
    if is_wrapped(model):
        raise ValueError(
            "This model still holds masks: call `keras_mft.bake(model)` first, "
            "then export the plain model."
        )
    if os.path.exists(directory) and not (os.path.isdir(directory) and not os.listdir(directory)):
        raise ValueError(
            f"{directory} already exists and is not empty: the export never "
            "replaces files. Choose a new directory."
        )
    preprocessor = model.preprocessor
    if preprocessor is None:
        raise ValueError(
            "This model has no preprocessor, so its tokenizer cannot be exported. "
            "Set `model.preprocessor` (e.g. the one the model was loaded with) first."
        )
    model.preprocessor = None  # the weights alone, as KerasHub's docs suggest
    try:
        model.export_to_transformers(directory)
    finally:
        model.preprocessor = preprocessor
    # After the weights: a tokenizer may complete the model's config.
    preprocessor.tokenizer.export_to_transformers(directory)


def check_checkpoint_blocks(directory, model):
    """Refuses a checkpoint whose weights hold other blocks than the loaded `model` has.

    Args:
        directory: a Hugging Face checkpoint (`config.json`, `*.safetensors`);
            anything else (a KerasHub preset, a handle) passes unchecked.
        model: the `CausalLM` or backbone KerasHub loaded from it.
    """
    blocks = set()
    for path in glob.glob(os.path.join(str(directory), "*.safetensors")):
        with safetensors.safe_open(path, framework="numpy") as file:
            found = (re.search(r"(?:^|\.)(?:layers|h)\.(\d+)\.", key) for key in file.keys())
            blocks |= {int(match.group(1)) for match in found if match}
    declared = getattr(model, "backbone", model).num_layers
    if blocks and len(blocks) != declared:
        raise ValueError(
            f"The weights in {directory} hold {len(blocks)} blocks, but its config.json "
            f"declares {declared}, and KerasHub loads only those. Correct config.json "
            "(num_hidden_layers, n_layer)."
        )
