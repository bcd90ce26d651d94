"""Small random models and Keras helpers shared by the tests.

Weights come from numpy with a fixed seed, so a model is the same on every
backend and its outputs can be compared with the numpy references
(`tests/shared/references.py`).
"""

import io

import keras
import keras_hub
import numpy as np
import sentencepiece
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

import keras_mft

VOCABULARY_SIZE = 64


def tiny_llama(num_layers=3, hidden_dim=32, seed=0, dtype=None, backbone_only=False):
    """A random `LlamaCausalLM` (4 query heads, 2 key/value heads)."""
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=num_layers,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=48,
        dtype=dtype,
    )
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if variable.path.endswith("scale"):
            value = 1.0 + 0.1 * rng.standard_normal(variable.shape)
        else:
            value = 0.2 * rng.standard_normal(variable.shape)
        variable.assign(value.astype("float32"))
    if backbone_only:
        return backbone
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


SMALL = dict(vocabulary_size=VOCABULARY_SIZE, num_layers=2, hidden_dim=16, intermediate_dim=32)
GQA = dict(num_query_heads=4, num_key_value_heads=2)
# Every family `wrap` takes: CausalLM class, backbone class, the backbone's arguments.
FAMILIES = {
    "llama": ("LlamaCausalLM", "LlamaBackbone", {**SMALL, **GQA}),
    "llama3": ("Llama3CausalLM", "Llama3Backbone", {**SMALL, **GQA}),
    "mistral": ("MistralCausalLM", "MistralBackbone", {**SMALL, **GQA}),
    "gemma": ("GemmaCausalLM", "GemmaBackbone", {**SMALL, **GQA, "head_dim": 4}),
    "gemma3": (
        "Gemma3CausalLM",
        "Gemma3Backbone",
        {**SMALL, **GQA, "head_dim": 4, "image_size": 16, "vision_encoder": None}
        | {"use_post_ffw_norm": True, "use_post_attention_norm": True},  # as every preset
    ),
    "qwen": ("QwenCausalLM", "QwenBackbone", {**SMALL, **GQA}),
    "qwen3": ("Qwen3CausalLM", "Qwen3Backbone", {**SMALL, **GQA, "head_dim": 4}),
    "phi3": ("Phi3CausalLM", "Phi3Backbone", {**SMALL, **GQA}),
    "gpt2": ("GPT2CausalLM", "GPT2Backbone", {**SMALL, "num_heads": 4, "max_sequence_length": 32}),
}


def small_causal_lm(family, tokenizer=None):
    """A random model of `family`, weights from numpy (the same on every backend);
    with `tokenizer`, its vocabulary and a preprocessor around it."""
    causal_lm_name, backbone_name, arguments = FAMILIES[family]
    if tokenizer is not None:
        arguments = {**arguments, "vocabulary_size": tokenizer.vocabulary_size()}
    backbone = getattr(keras_hub.models, backbone_name)(**arguments)
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        variable.assign((0.2 * rng.standard_normal(variable.shape)).astype("float32"))
    causal_lm = getattr(keras_hub.models, causal_lm_name)
    preprocessor = None if tokenizer is None else causal_lm.preprocessor_cls(tokenizer)
    return causal_lm(backbone=backbone, preprocessor=preprocessor)


def smollm2_shaped(hidden_dim, num_query_heads, num_key_value_heads):
    """A random 2-block Llama 3 with SmolLM2's preprocessor (49,152 tokens, ChatML),
    the same weights each call."""
    keras.utils.set_random_seed(0)
    preprocessor = keras_mft.tiny_smollm2().preprocessor
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
        num_layers=2,
        num_query_heads=num_query_heads,
        num_key_value_heads=num_key_value_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=64,
        tie_word_embeddings=True,  # as SmolLM2's
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def token_batch(batch_size=2, sequence_length=8, seed=1):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, VOCABULARY_SIZE, (batch_size, sequence_length)),
        "padding_mask": np.ones((batch_size, sequence_length), bool),
    }


SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
]


def byte_tokenizer():
    """A byte-level BPE tokenizer that can encode any text, with chat tokens."""
    vocabulary = {token: i for i, token in enumerate(SPECIAL_TOKENS + bytes_to_unicode()[1])}
    merges = ["Ġ t", "h e"]
    for merge in merges:
        vocabulary[merge.replace(" ", "")] = len(vocabulary)
    return keras_hub.models.Llama3Tokenizer(vocabulary=vocabulary, merges=merges)


def qwen3_tokenizer():
    """`byte_tokenizer`'s vocabulary and merges as a Qwen3 tokenizer."""
    base = byte_tokenizer()
    return keras_hub.models.Qwen3Tokenizer(
        vocabulary={**base.vocabulary, "<|endoftext|>": base.vocabulary_size()},
        merges=base.merges,
    )


SENTENCE_PIECE_TEXTS = [
    "The quick brown fox jumped over the lazy dog.",
    "Question: 12 + 30 = 42? Answer: yes, 42.",
    "Héllo wörld ✓ 日本",
    "line one\nline two",
]


def sentence_piece_proto():
    """A small SentencePiece BPE model as Llama 2's (byte fallback, digits split,
    no normalization), with Phi-3's special tokens; trained on SENTENCE_PIECE_TEXTS."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCE_PIECE_TEXTS * 20),
        model_writer=proto,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"],
        minloglevel=2,
    )
    return proto.getvalue()


def fit_a_little(model, batch):
    """Two epochs of Adam(0.01) on `batch`; returns the masks before and after."""
    before = keras_mft.masks_of(model)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(batch, batch["token_ids"], batch_size=2, epochs=2, verbose=0)
    return before, keras_mft.masks_of(model)


def masked(model):
    """The masked layers of `model`, in model order."""
    return [layer for layer in model._flatten_layers() if hasattr(layer, "scores")]


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def logits_of(model, batch):
    return to_numpy(keras.ops.cast(model(batch), "float32"))


def frozen_values(model):
    """{path: numpy value} of every variable but the scores and the last thresholds."""
    return {
        v.path: to_numpy(v).copy()
        for v in model.weights
        if not v.path.endswith(("/scores", "/last_threshold"))
    }


def gradient(loss_fn, variable):
    """The gradient of a scalar function with respect to one Keras variable.

    Keras has no backend-neutral gradient op (its trainers call each
    backend's own), so this does the same: one branch per backend.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def stateless_loss(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return loss_fn()

        return jax.grad(stateless_loss)(variable.value)
    if backend == "torch":
        value = variable.value
        value.grad = None
        loss_fn().backward()
        return value.grad
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn()
    return tape.gradient(loss, variable.value)
