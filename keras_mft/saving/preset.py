"""`save_preset` (`save_to_preset` that keeps tied word embeddings) and `load_preset`."""

import importlib
import json
import os

import keras
import keras_hub

from keras_mft.masking import architectures


def save_preset(model: keras.Model, directory: str | os.PathLike) -> None:
    """Saves a plain (baked or never wrapped) model with `save_to_preset`.

    KerasHub 0.32's `LlamaBackbone.get_config` leaves out
    `tie_word_embeddings`, so a model with tied embeddings (SmolLM2, Llama
    3.2) would not load back; this writes it into `config.json` and `task.json`.

    Args:
        model: a `CausalLM` or `Backbone` without masks (see `keras_mft.bake`).
        directory: the preset directory to write.
    """
    model.save_to_preset(directory)
    tied = getattr(architectures.backbone_of(model), "tie_word_embeddings", None)
    if tied is None:  # a model that always or never ties its embeddings
        return
    _set_tied(os.path.join(directory, "config.json"), lambda c: c["config"], bool(tied))
    _set_tied(
        os.path.join(directory, "task.json"),
        lambda c: c["config"]["backbone"]["config"],
        bool(tied),
    )


def _set_tied(path, backbone_config_of, tied):
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    backbone_config_of(config).setdefault("tie_word_embeddings", tied)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=4)


def load_preset(preset: str | os.PathLike, **kwargs) -> keras_hub.models.CausalLM:
    """`keras_hub.models.CausalLM.from_preset(preset, **kwargs)`, also for presets
    that keras-mft's embedded SmolLM2 wrote.

    Such a preset names keras-mft's SmolLM2 tokenizer and preprocessor, which
    Keras finds once their module is imported; `import keras_mft` imports
    nothing until a name is used, so this imports it first (when the
    `embedded` extra is installed: without it no such preset was written).

    Example:

    ```python
    keras_mft.save_preset(keras_mft.tiny_smollm2(), "tiny_preset")
    model = keras_mft.load_preset("tiny_preset")
    model.generate("Hi", max_length=8)
    ```
    """
    try:
        importlib.import_module("keras_mft.embedded.smollm2")
    except ImportError:
        pass
    return keras_hub.models.CausalLM.from_preset(preset, **kwargs)
