"""Hugging Face `transformers` checkpoints: a baked model exported as one, and a
check on one that KerasHub loads.

The weights and config of Llama 3, Mistral, Gemma, Gemma 3, Qwen and GPT-2
are written by KerasHub's `CausalLM.export_to_transformers`; those of Llama
(Llama 2), Qwen3 and Phi-3 by keras-mft's converters
(`transformers_converters`), in the same files. The tokenizer is written by
its own `export_to_transformers` (KerasHub's tokenizers have one, and the
embedded SmolLM2's writes its own files), or by keras-mft's converters for
the tokenizers KerasHub cannot export. KerasHub loads the blocks that a
checkpoint's `config.json` declares and drops any others without a word:
`check_checkpoint_blocks` refuses that.
"""

import glob
import json
import os
import re
import shutil

import keras
import keras_hub
import numpy as np
import safetensors
import safetensors.numpy

from keras_mft.masking.wrapping import is_wrapped
from keras_mft.saving import transformers_converters as converters


def export_to_transformers(model: keras.Model, directory: str | os.PathLike) -> None:
    """Writes a baked KerasHub causal LM as a `transformers` checkpoint.

    The directory then loads with `transformers.AutoModelForCausalLM` (and
    `AutoTokenizer` when the model has a preprocessor), without keras-mft.
    The removed weights are stored as zeros. Every family `keras_mft.wrap`
    takes is exported; a failed export leaves no files behind.

    Args:
        model: a KerasHub `CausalLM` after `keras_mft.bake`. Its
            preprocessor's tokenizer is exported with it; a model without
            a preprocessor gets its weights and config only, as in KerasHub.
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
    directory = os.fspath(directory)
    existed = os.path.exists(directory)
    if existed and not (os.path.isdir(directory) and not os.listdir(directory)):
        raise ValueError(
            f"{directory} already exists and is not empty: the export never "
            "replaces files. Choose a new directory."
        )
    try:
        _write(model, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        if existed:
            os.makedirs(directory)
        raise


def _write(model, directory):
    backbone = model.backbone
    preprocessor = model.preprocessor
    tokenizer = preprocessor.tokenizer if preprocessor is not None else None
    if type(backbone) in converters.CONFIGS:
        config = converters.CONFIGS[type(backbone)](backbone)
        weights = converters.WEIGHTS[type(backbone)](backbone, include_lm_head=True)
        if tokenizer is not None:
            config["bos_token_id"] = _token_id(tokenizer, tokenizer.start_token)
            config["eos_token_id"] = _token_id(tokenizer, tokenizer.end_token)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as file:
            json.dump(config, file, indent=2)
        # Contiguous: PyTorch's transposes are strided views, which
        # safetensors would write in storage order.
        safetensors.numpy.save_file(
            {
                name: np.ascontiguousarray(keras.ops.convert_to_numpy(value))
                for name, value in weights.items()
            },
            os.path.join(directory, "model.safetensors"),
            metadata={"format": "pt"},
        )
    else:
        model.preprocessor = None  # the weights alone, as KerasHub's docs suggest
        try:
            # KerasHub's own, also for a class (SmolLM2CausalLM) that overrides it.
            keras_hub.models.CausalLM.export_to_transformers(model, directory)
        finally:
            model.preprocessor = preprocessor
    if tokenizer is None:
        return
    # After the weights: a tokenizer may complete the model's config.
    if type(tokenizer) in converters.TOKENIZER_CONFIGS:
        converters.tokenizer_files(tokenizer, directory)
        config = converters.TOKENIZER_CONFIGS[type(tokenizer)](tokenizer)
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as file:
            json.dump(config, file, indent=2, ensure_ascii=False)
    else:
        tokenizer.export_to_transformers(directory)


def _token_id(tokenizer, token):
    return None if token is None else int(tokenizer.token_to_id(token))


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
