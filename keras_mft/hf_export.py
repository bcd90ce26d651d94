"""A baked model as a Hugging Face `transformers` checkpoint, tokenizer included.

KerasHub's `CausalLM.export_to_transformers` writes the weights and config of
a Llama3 (and other) backbone, and the tokenizer of the tokenizers it knows.
The embedded SmolLM2's `SmolLM2Tokenizer` is not one of them, so for it
keras-mft writes the tokenizer itself: `tokenizer.json` is the `tokenizers`
object that `SmolLM2Tokenizer` already tokenizes with in eager calls (the
same vocabulary, merges, special tokens and digit-splitting pre-tokenizer,
whose ids equal llama.cpp's), and `tokenizer_config.json` names its start
and end tokens and its chat template. Every other model goes through
KerasHub's exporter unchanged.
"""

import json
import os

from keras_mft.embedded.smollm2_tokenizer import SmolLM2Tokenizer
from keras_mft.masked_layers import is_masked


def export_to_transformers(model, directory):
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
    from keras_mft.embedded.smollm2 import tiny_smollm2

    # Or keras_mft.smollm2_135m_instruct() with a mask file learned on it.
    model = keras_mft.bake(keras_mft.wrap(tiny_smollm2(), layers="0:2"))
    keras_mft.export_to_transformers(model, "baked_hf")
    # transformers.AutoModelForCausalLM.from_pretrained("baked_hf")
    ```
    """
    if any(is_masked(layer) for layer in model._flatten_layers()):
        raise ValueError(
            "This model still holds masks: call `keras_mft.bake(model)` first, "
            "then export the plain model."
        )
    if os.path.exists(directory) and not (os.path.isdir(directory) and not os.listdir(directory)):
        raise ValueError(
            f"{directory} already exists and is not empty: the export never "
            "replaces files. Choose a new directory."
        )
    if model.preprocessor is None:
        raise ValueError(
            "This model has no preprocessor, so its tokenizer cannot be exported. "
            "Set `model.preprocessor` (e.g. the one the model was loaded with) first."
        )
    tokenizer = model.preprocessor.tokenizer
    if not isinstance(tokenizer, SmolLM2Tokenizer):
        model.export_to_transformers(directory)
        return
    preprocessor = model.preprocessor
    model.preprocessor = None  # KerasHub would refuse SmolLM2Tokenizer
    try:
        model.export_to_transformers(directory)
    finally:
        model.preprocessor = preprocessor
    _write_tokenizer(tokenizer, directory)


def _write_tokenizer(tokenizer, directory):
    """tokenizer.json and tokenizer_config.json of a `SmolLM2Tokenizer`."""
    start, end = tokenizer.start_token, tokenizer.end_token
    # The `tokenizers` object of KerasHub's eager path, with SmolLM2's
    # pre-tokenizer (see `SmolLM2Tokenizer`).
    tokenizer._tokenizer.save(os.path.join(directory, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": start,
        "eos_token": end,
        "pad_token": end,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
    }
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2, ensure_ascii=False)
    # The model's own config names the same start and end tokens.
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                model_config = json.load(file)
            model_config["bos_token_id"] = tokenizer.token_to_id(start)
            model_config["eos_token_id"] = tokenizer.token_to_id(end)
            with open(path, "w", encoding="utf-8") as file:
                json.dump(model_config, file, indent=2)
