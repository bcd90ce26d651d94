"""`transformers` converters for the families whose KerasHub has none.

KerasHub's exporter (`keras_hub/src/utils/transformers/export/`) converts
Llama 3, Mistral, Gemma, Gemma 3, Qwen and GPT-2. keras-mft wraps three more:
Llama (Llama 2), Qwen3 and Phi-3; and KerasHub's Gemma weights keep the first
key and value head only (right for Gemma 2B's one, wrong for Gemma 7B's 16).
Each has here the functions a KerasHub converter has, with the same names and
arguments (`get_<family>_config`, `get_<family>_weights_map`,
`get_<family>_tokenizer_config`), so that they can go upstream as they are. Hugging Face's names and layouts
are those of `transformers`' `LlamaForCausalLM`, `Qwen3ForCausalLM` and
`Phi3ForCausalLM`.
"""

import json
import os

import keras_hub
from keras import ops
from keras_hub.src.utils.transformers.export import gemma
from keras_hub.src.utils.transformers.export.llama3 import get_llama3_config
from keras_hub.src.utils.transformers.export.llama3 import get_llama3_weights_map

from keras_mft.data import chat_templates

# --- Llama (Llama 2): Llama 3's layout; the rotary scaling differs. ---


def get_llama_config(backbone):
    config = get_llama3_config(backbone)
    if backbone.rope_frequency_adjustment_factor is None:
        config["max_position_embeddings"] = 4096  # Llama 2's context
    if backbone.rope_position_scaling_factor != 1.0:
        config["rope_scaling"] = {
            "rope_type": "linear",
            "factor": backbone.rope_position_scaling_factor,
        }
    return config


get_llama_weights_map = get_llama3_weights_map


def get_llama_tokenizer_config(tokenizer):
    return _sentence_piece_config(tokenizer, unknown="<unk>")


# --- Gemma: KerasHub's, with every key and value head. ---


def get_gemma_weights_map(backbone, include_lm_head=False):
    weights = gemma.get_gemma_weights_map(backbone, include_lm_head=include_lm_head)
    for i in range(backbone.num_layers):
        attention = backbone.get_layer(f"decoder_block_{i}").attention
        for name, layer in (("k_proj", attention.key_dense), ("v_proj", attention.value_dense)):
            # [heads, hidden, head_dim] -> [heads * head_dim, hidden]
            weights[f"model.layers.{i}.self_attn.{name}.weight"] = ops.reshape(
                ops.transpose(layer.kernel, (0, 2, 1)), (-1, backbone.hidden_dim)
            )
    return weights


# --- Qwen3: Qwen's layout without biases, with per-head query and key norms. ---


def get_qwen3_config(backbone):
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "head_dim": backbone.head_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "intermediate_size": backbone.intermediate_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": backbone.dropout,
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_theta": backbone.rope_max_wavelength,
        "use_sliding_window": backbone.sliding_window_size is not None,
        "sliding_window": backbone.sliding_window_size,
        "tie_word_embeddings": backbone.tie_word_embeddings,
        "torch_dtype": backbone.dtype_policy.compute_dtype,
    }


def get_qwen3_weights_map(backbone, include_lm_head=False):
    weights = _embedding_and_norm(backbone)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attention = block._self_attention_layer
        prefix = f"model.layers.{i}."
        weights[prefix + "input_layernorm.weight"] = block._self_attention_layernorm.scale
        weights[prefix + "post_attention_layernorm.weight"] = block._feedforward_layernorm.scale
        for name, layer in (
            ("q_proj", attention._query_dense),
            ("k_proj", attention._key_dense),
            ("v_proj", attention._value_dense),
        ):
            weights[prefix + f"self_attn.{name}.weight"] = _projection(layer.kernel, inputs=1)
        weights[prefix + "self_attn.o_proj.weight"] = _projection(
            attention._output_dense.kernel, inputs=2
        )
        weights[prefix + "self_attn.q_norm.weight"] = attention._query_dense_layer_norm.scale
        weights[prefix + "self_attn.k_norm.weight"] = attention._key_dense_layer_norm.scale
        weights[prefix + "mlp.gate_proj.weight"] = ops.transpose(
            block._feedforward_gate_dense.kernel
        )
        weights[prefix + "mlp.up_proj.weight"] = ops.transpose(
            block._feedforward_intermediate_dense.kernel
        )
        weights[prefix + "mlp.down_proj.weight"] = ops.transpose(
            block._feedforward_output_dense.kernel
        )
    return _with_lm_head(weights, backbone, include_lm_head)


def get_qwen3_tokenizer_config(tokenizer):
    # vocab.json and merges.txt: transformers' Qwen2 tokenizer brings Qwen's
    # own pre-tokenizer (every digit on its own).
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": tokenizer.end_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "added_tokens_decoder": _added_tokens(tokenizer, tokenizer.unsplittable_tokens),
        **_chat_template(tokenizer),
    }


# --- Phi-3: fused projections (qkv_proj, gate_up_proj). ---


def get_phi3_config(backbone):
    if backbone.rope_scaling_type is not None:
        raise ValueError(
            f"keras-mft exports Phi-3 without rotary scaling only; this model's "
            f"is {backbone.rope_scaling_type!r} (the 128k-context variants)."
        )
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "intermediate_size": backbone.intermediate_dim,
        "hidden_act": "silu",
        "attention_dropout": backbone.dropout,
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_theta": backbone.rope_max_wavelength,
        "rope_scaling": None,
        "max_position_embeddings": backbone.max_sequence_length,
        "original_max_position_embeddings": backbone.pretraining_sequence_length,
        "sliding_window": None,
        "tie_word_embeddings": False,
        # transformers' defaults are Phi-3-mini's ids; the tokenizer's replace these.
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "torch_dtype": backbone.dtype_policy.compute_dtype,
    }


def get_phi3_weights_map(backbone, include_lm_head=False):
    weights = _embedding_and_norm(backbone)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attention = block.attention
        prefix = f"model.layers.{i}."
        weights[prefix + "input_layernorm.weight"] = block.pre_attention_layernorm.scale
        weights[prefix + "post_attention_layernorm.weight"] = block.post_attention_layernorm.scale
        # transformers' Phi3Attention splits one matrix into q, k and v rows.
        weights[prefix + "self_attn.qkv_proj.weight"] = ops.concatenate(
            [
                _projection(layer.kernel, inputs=1)
                for layer in (attention.query_dense, attention.key_dense, attention.value_dense)
            ]
        )
        weights[prefix + "self_attn.o_proj.weight"] = _projection(
            attention.output_dense.kernel, inputs=2
        )
        # ... and its MLP one matrix into the gate's rows, then the up rows.
        weights[prefix + "mlp.gate_up_proj.weight"] = ops.transpose(
            ops.concatenate(
                [block.feedforward_gate_dense.kernel, block.feedforward_intermediate_dense.kernel],
                axis=1,
            )
        )
        weights[prefix + "mlp.down_proj.weight"] = ops.transpose(
            block.feedforward_output_dense.kernel
        )
    return _with_lm_head(weights, backbone, include_lm_head)


def get_phi3_tokenizer_config(tokenizer):
    return _sentence_piece_config(tokenizer, unknown="<unk>")


# --- Shared by the three. ---


def _projection(kernel, inputs):
    """A Keras kernel as a Hugging Face `[out, in]` matrix; its first `inputs`
    axes are the input (`[hidden, heads, head_dim]` or `[heads, head_dim, hidden]`)."""
    shape = ops.shape(kernel)
    size_in = 1
    for size in shape[:inputs]:
        size_in *= size
    return ops.transpose(ops.reshape(kernel, (size_in, -1)))


def _embedding_and_norm(backbone):
    return {
        "model.embed_tokens.weight": backbone.token_embedding.embeddings,
        "model.norm.weight": backbone.layer_norm.scale,
    }


def _with_lm_head(weights, backbone, include_lm_head):
    if include_lm_head:
        embedding = backbone.token_embedding
        weights["lm_head.weight"] = (
            embedding.embeddings
            if getattr(backbone, "tie_word_embeddings", False)
            else ops.transpose(embedding.reverse_embeddings)
        )
    return weights


def _sentence_piece_config(tokenizer, unknown):
    # tokenizer.model is the SentencePiece proto; transformers' Llama tokenizer reads it.
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": tokenizer.start_token,
        "eos_token": tokenizer.end_token,
        "unk_token": unknown,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "added_tokens_decoder": _added_tokens(
            tokenizer, [unknown, tokenizer.start_token, tokenizer.end_token]
        ),
        **_chat_template(tokenizer),
    }


def _chat_template(tokenizer):
    """The template keras-mft trains this tokenizer's model with, if its tokens name one."""
    try:
        return {"chat_template": chat_templates.TEMPLATES[chat_templates.template_for(tokenizer)]}
    except ValueError:  # Llama 2's tokens name no format
        return {}


def _added_tokens(tokenizer, tokens):
    found = {}
    for token in tokens:
        token_id = tokenizer.token_to_id(token) if token is not None else None
        if token_id is not None:
            found[str(int(token_id))] = {
                "content": token,
                "special": True,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
    return dict(sorted(found.items(), key=lambda item: int(item[0])))


def tokenizer_files(tokenizer, path):
    """Writes a tokenizer's vocabulary in the files transformers reads for it."""
    if isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer):
        with open(os.path.join(path, "tokenizer.model"), "wb") as file:
            file.write(tokenizer.proto)
        return
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as file:
        json.dump(dict(tokenizer.vocabulary), file, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as file:
        file.write("#version: 0.2\n" + "".join(f"{merge}\n" for merge in tokenizer.merges))


# Exact classes: Llama3Backbone, a LlamaBackbone, is KerasHub's to export.
CONFIGS = {
    keras_hub.models.GemmaBackbone: gemma.get_gemma_config,
    keras_hub.models.LlamaBackbone: get_llama_config,
    keras_hub.models.Qwen3Backbone: get_qwen3_config,
    keras_hub.models.Phi3Backbone: get_phi3_config,
}
WEIGHTS = {
    keras_hub.models.GemmaBackbone: get_gemma_weights_map,
    keras_hub.models.LlamaBackbone: get_llama_weights_map,
    keras_hub.models.Qwen3Backbone: get_qwen3_weights_map,
    keras_hub.models.Phi3Backbone: get_phi3_weights_map,
}
TOKENIZER_CONFIGS = {
    keras_hub.models.LlamaTokenizer: get_llama_tokenizer_config,
    keras_hub.models.Qwen3Tokenizer: get_qwen3_tokenizer_config,
    keras_hub.models.Phi3Tokenizer: get_phi3_tokenizer_config,
}
