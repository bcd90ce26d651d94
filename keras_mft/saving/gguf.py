"""`export_to_gguf`: a baked model as one GGUF file, for llama.cpp and Ollama.

The file is written with the `gguf` package's `GGUFWriter` (llama.cpp's own
writer; no llama.cpp build is needed), with the names and layout that
llama.cpp's `convert_hf_to_gguf.py` gives a Llama, a Mistral (as a Llama)
or a Qwen3: `[out, in]` matrices, a Llama's query and key rows permuted into
llama.cpp's rotary order (Qwen3's order is Hugging Face's), norms in float32,
tied embeddings kept tied (no `output.weight`), and in the metadata the
tokenizer (a SentencePiece one's pieces, scores and types; a byte-level BPE
one's tokens, merges, types and pre-tokenizer name; the special ids) and the
chat template. Beside it, an Ollama `Modelfile`.
"""

import os

import keras
import keras_hub
import numpy as np

from keras_mft.masking import architectures
from keras_mft.masking.layers import is_masked

# Decoder block weights: KerasHub variable path -> llama.cpp tensor name.
BLOCK_WEIGHTS = {
    "self_attention_layernorm/scale": "attn_norm",
    "self_attention/query/kernel": "attn_q",
    "self_attention/key/kernel": "attn_k",
    "self_attention/value/kernel": "attn_v",
    "self_attention/attention_output/kernel": "attn_output",
    "feedforward_layernorm/scale": "ffn_norm",
    "feedforward_gate_dense/kernel": "ffn_gate",
    "feedforward_intermediate_dense/kernel": "ffn_up",
    "feedforward_output_dense/kernel": "ffn_down",
}
# Qwen3's per-head norms of the query and key.
QWEN3_WEIGHTS = {
    "self_attention/query_dense_layernorm/scale": "attn_q_norm",
    "self_attention/key_dense_layernorm/scale": "attn_k_norm",
}
DTYPES = ("float32", "float16", "bfloat16", "q8_0")
# llama.cpp's name of each tokenizer's pre-tokenizer (its word splitting).
PRE_TOKENIZERS = {
    "SmolLM2Tokenizer": "smollm",
    "Llama3Tokenizer": "llama-bpe",
    "Qwen3Tokenizer": "qwen2",
}


def architecture_of(backbone):
    """llama.cpp's architecture for a KerasHub backbone, as its converter names it:
    Llama (Llama 2, Llama 3, SmolLM2) and Mistral are `llama`, Qwen3 is `qwen3`."""
    if isinstance(backbone, (keras_hub.models.LlamaBackbone, keras_hub.models.MistralBackbone)):
        return "llama"
    if isinstance(backbone, keras_hub.models.Qwen3Backbone):
        return "qwen3"
    raise ValueError(
        f"GGUF export covers Llama, Llama 3, SmolLM2, Mistral and Qwen3, not "
        f"{type(backbone).__name__}: export it with `keras_mft.export_to_transformers` "
        "and convert that with llama.cpp's convert_hf_to_gguf.py."
    )


def weight_names(backbone):
    """{Keras variable path: GGUF tensor name} for a Llama-family backbone."""
    names = {
        "token_embedding/embeddings": "token_embd.weight",
        "sequence_output_layernorm/scale": "output_norm.weight",
    }
    if not getattr(backbone, "tie_word_embeddings", False):  # Mistral never ties
        names["token_embedding/reverse_embeddings"] = "output.weight"
    block_weights = BLOCK_WEIGHTS
    if architecture_of(backbone) == "qwen3":
        block_weights = {**BLOCK_WEIGHTS, **QWEN3_WEIGHTS}
    for i in range(backbone.num_layers):
        for keras_name, gguf_name in block_weights.items():
            names[f"transformer_layer_{i}/{keras_name}"] = f"blk.{i}.{gguf_name}.weight"
    return names


def rotary_heads(backbone):
    """The heads of the matrices whose rows llama.cpp permutes for its rotary order
    (its `llama` architecture; Qwen3's rotary order is Hugging Face's)."""
    if architecture_of(backbone) != "llama":
        return {}
    return {"attn_q": backbone.num_query_heads, "attn_k": backbone.num_key_value_heads}


def permute_rotary_rows(weight, num_heads):
    """llama.cpp's row order of a query or key matrix (`[out, in]`): the two
    rotary halves of each head's rows interleaved, as `convert_hf_to_gguf.py`
    writes them. `unpermute_rotary_rows` undoes it."""
    out_dim, in_dim = weight.shape
    weight = weight.reshape(num_heads, 2, out_dim // num_heads // 2, in_dim)
    return weight.swapaxes(1, 2).reshape(out_dim, in_dim)


def unpermute_rotary_rows(weight, num_heads):
    """Undo llama.cpp's row order of a query or key matrix.

    llama.cpp interleaves the two rotary halves of each head's rows;
    Hugging Face and KerasHub keep them as two halves.
    """
    out_dim, in_dim = weight.shape
    weight = weight.reshape(num_heads, out_dim // num_heads // 2, 2, in_dim)
    return weight.swapaxes(1, 2).reshape(out_dim, in_dim)


def export_to_gguf(
    model: keras.Model, path: str | os.PathLike, dtype: str = "float16"
) -> dict[str, str]:
    """Writes a baked (or never wrapped) `CausalLM` as a GGUF file.

    Llama, Llama 2, Llama 3 and SmolLM2 (KerasHub's `LlamaBackbone` and
    `Llama3Backbone`), Mistral and Qwen3, with a SentencePiece tokenizer
    (Llama 2's, Mistral's) or a byte-level BPE one (`Llama3Tokenizer`,
    `Qwen3Tokenizer`, keras-mft's `SmolLM2Tokenizer`); other families and
    tokenizers are refused, naming what is missing. A Mistral's context is
    its sliding window (llama.cpp runs it as a Llama, without the window).
    Also writes an Ollama `Modelfile` beside the file
    (`ollama create NAME -f Modelfile`).

    Args:
        model: a `CausalLM` with its preprocessor, without masks.
        path: the `.gguf` file to write.
        dtype: the matrices' type: `"float32"`, `"float16"`, `"bfloat16"` or
            `"q8_0"` (llama.cpp's 8-bit blocks); norms stay float32.

    Returns:
        `{"gguf": path, "modelfile": path}`.

    Example:

    ```python
    model = keras_mft.bake(keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2"))
    keras_mft.export_to_gguf(model, "tiny.gguf", dtype="q8_0")
    ```
    """
    gguf = gguf_package()
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` is one of {', '.join(DTYPES)}, not {dtype!r}.")
    if any(is_masked(layer) for layer in model._flatten_layers()):
        raise ValueError("The model holds masks: call `keras_mft.bake(model)` first.")
    backbone = architectures.backbone_of(model)
    architecture = architecture_of(backbone)
    tokenizer = getattr(model.preprocessor, "tokenizer", None)
    sentence_piece = isinstance(tokenizer, keras_hub.tokenizers.SentencePieceTokenizer)
    pre = PRE_TOKENIZERS.get(type(tokenizer).__name__)
    if pre is None and not sentence_piece:
        raise ValueError(
            f"GGUF export writes SentencePiece tokenizers (Llama 2's, Mistral's) and the byte-level "
            f"BPE tokenizers {', '.join(PRE_TOKENIZERS)}, not {type(tokenizer).__name__}: "
            "give the model such a preprocessor."
        )
    writer = gguf.GGUFWriter(os.fspath(path), architecture)
    _write_config(writer, backbone)
    if sentence_piece:
        _write_sentence_piece(writer, tokenizer)
    else:
        _write_byte_pair(writer, tokenizer, pre)
    writer.add_add_bos_token(bool(getattr(model.preprocessor, "add_start_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    _write_weights(writer, backbone, dtype)
    file_types = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16"}
    writer.add_file_type(gguf.LlamaFileType[file_types.get(dtype, "MOSTLY_Q8_0")])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    modelfile = os.path.join(os.path.dirname(os.path.abspath(path)), "Modelfile")
    with open(modelfile, "w", encoding="utf-8") as file:
        file.write(f"FROM ./{os.path.basename(path)}\n")
        if tokenizer.end_token_id is not None:
            file.write(f'PARAMETER stop "{tokenizer.id_to_token(tokenizer.end_token_id)}"\n')
    return {"gguf": os.fspath(path), "modelfile": modelfile}


def _write_config(writer, backbone):
    head_dim = (
        getattr(backbone, "head_dim", None) or backbone.hidden_dim // backbone.num_query_heads
    )
    # Llama's scaling, or Mistral's and Qwen3's.
    scaling = getattr(backbone, "rope_position_scaling_factor", None)
    scaling = scaling or getattr(backbone, "rope_scaling_factor", 1.0)
    if scaling != 1.0 or getattr(backbone, "rope_frequency_adjustment_factor", None):
        raise ValueError(
            "GGUF export writes rotary embeddings without scaling; this model scales them "
            "(e.g. Llama 3.1's rope settings): export it with `keras_mft.export_to_transformers`."
        )
    # llama.cpp's `llama` has no sliding window (its converter drops Mistral's):
    # a context no longer than the window keeps every position's attention the same.
    context = getattr(backbone, "sliding_window", None) or 8192
    writer.add_block_count(backbone.num_layers)
    writer.add_context_length(context)
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_head_count(backbone.num_query_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_rope_freq_base(float(backbone.rope_max_wavelength))
    writer.add_layer_norm_rms_eps(float(backbone.layer_norm_epsilon))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(backbone.vocabulary_size)


def _write_byte_pair(writer, tokenizer, pre):
    gguf = gguf_package()
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
    special = set(tokenizer.special_tokens) | set(
        getattr(tokenizer, "unsplittable_tokens", ()) or ()
    )
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(tokenizer.merges))
    if tokenizer.start_token_id is not None:  # Qwen3 has none
        writer.add_bos_token_id(tokenizer.start_token_id)
    writer.add_eos_token_id(tokenizer.end_token_id)


def _write_sentence_piece(writer, tokenizer):
    """As llama.cpp's converter writes Llama 2's: the pieces, their scores and
    types (SentencePiece's type numbers are GGUF's), read from the model proto."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "A SentencePiece tokenizer is read with the `sentencepiece` package, which "
            'is not installed: pip install "keras-mft[gguf]".'
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.proto)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([piece.piece for piece in proto.pieces])
    writer.add_token_scores([piece.score for piece in proto.pieces])
    writer.add_token_types([int(piece.type) for piece in proto.pieces])
    writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    writer.add_bos_token_id(tokenizer.start_token_id)
    writer.add_eos_token_id(tokenizer.end_token_id)
    unknown = [i for i, piece in enumerate(proto.pieces) if piece.type == piece.UNKNOWN]
    if unknown:
        writer.add_unk_token_id(unknown[0])


def _write_weights(writer, backbone, dtype):
    gguf = gguf_package()
    heads = rotary_heads(backbone)
    variables = {variable.path: variable for variable in backbone.weights}
    for path, name in weight_names(backbone).items():
        value = keras.ops.convert_to_numpy(keras.ops.cast(variables[path].value, "float32"))
        if path.endswith("attention_output/kernel"):  # (heads, head_dim, hidden)
            value = value.reshape(-1, value.shape[-1]).T
        elif path.endswith(("kernel", "reverse_embeddings")):  # (hidden, ...)
            value = value.reshape(value.shape[0], -1).T
        # Now `[out, in]`, the inverse of KerasHub's `convert_llama3.py`.
        kind = name.split(".")[-2]
        if kind in heads:
            value = permute_rotary_rows(value, heads[kind])
        value = np.ascontiguousarray(value)
        # Q8_0 packs rows in blocks of 32: a shorter row stays float16, as
        # llama.cpp's converter does.
        blocks = value.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0
        if value.ndim == 1 or dtype == "float32":
            writer.add_tensor(name, value.astype(np.float32))
        elif dtype == "float16" or (dtype == "q8_0" and not blocks):
            writer.add_tensor(name, value.astype(np.float16))
        else:
            qtype = (
                gguf.GGMLQuantizationType.BF16
                if dtype == "bfloat16"
                else gguf.GGMLQuantizationType.Q8_0
            )
            writer.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)


def gguf_package():
    """The `gguf` package (the `gguf` and `embedded` extras), imported when first needed."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "GGUF files are read and written with the `gguf` package, which is not "
            'installed: pip install "keras-mft[gguf]" (or "keras-mft[embedded]").'
        ) from None
    return gguf
