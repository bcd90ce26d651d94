"""`export_to_gguf`, read back by the `gguf` package and by the embedded model's
GGUF loader (checked against llama.cpp's own outputs in test_smollm2.py)."""

import gguf
import keras_hub
import numpy as np
import pytest
import sentencepiece

import keras_mft
from keras_mft import cli
from keras_mft.embedded import smollm2
from tests.shared.models import logits_of
from tests.shared.models import qwen3_tokenizer
from tests.shared.models import sentence_piece_proto
from tests.shared.models import small_causal_lm
from tests.shared.models import smollm2_shaped
from tests.shared.models import to_numpy
from tests.shared.models import token_batch


def smollm2_like(hidden_dim):
    """A baked model with SmolLM2's preprocessor (49,152 tokens, ChatML)."""
    model = smollm2_shaped(hidden_dim, num_query_heads=4, num_key_value_heads=2)
    return keras_mft.bake(keras_mft.wrap(model, layers="0:2", seed=0))


def read_back(path):
    """The backbone that the embedded model's loader builds from the file."""
    reader = gguf.GGUFReader(path)
    backbone = keras_hub.models.Llama3Backbone(**smollm2.backbone_config(reader))
    smollm2.load_weights(backbone, reader)
    return reader, keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)


def test_a_float32_file_gives_the_baked_models_logits(tmp_path):
    model = smollm2_like(hidden_dim=16)
    batch = token_batch(sequence_length=12)
    files = keras_mft.export_to_gguf(model, str(tmp_path / "model.gguf"), dtype="float32")
    reader, loaded = read_back(files["gguf"])
    np.testing.assert_array_equal(logits_of(loaded, batch), logits_of(model, batch))
    # What llama.cpp reads besides the weights.
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tokenizer = model.preprocessor.tokenizer
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(fields["tokenizer.ggml.merges"]) == len(tokenizer.merges)
    assert fields["tokenizer.ggml.token_type"][:17] == [gguf.TokenType.CONTROL] * 17
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    assert "output.weight" not in {tensor.name for tensor in reader.tensors}  # tied
    text = "What is 12 + 7?"
    np.testing.assert_array_equal(
        smollm2.preprocessor_from_gguf(reader).tokenizer(text), tokenizer(text)
    )
    assert (tmp_path / "Modelfile").read_text() == (
        'FROM ./model.gguf\nPARAMETER stop "<|im_end|>"\n'
    )


# The weights leave the backend as float32 numpy arrays, and numpy and the
# `gguf` package round them to each type: the float32 test above checks the
# backend's part on every backend; the rounding is checked on one.
@pytest.mark.one_backend("torch")
def test_each_type_is_within_its_rounding(tmp_path):
    # Rows of 64: two Q8_0 blocks of 32 each. (Rows of 16 stay float16, as
    # llama.cpp's converter leaves them.)
    model = smollm2_like(hidden_dim=64)
    batch = token_batch(sequence_length=12)
    expected = logits_of(model, batch)
    # Of the largest |logit|: float16 keeps 11 bits, bfloat16 8, and Q8_0
    # rounds each weight to 1/127 of its block's largest |weight|.
    bounds = {"float16": 2e-3, "bfloat16": 2e-2, "q8_0": 2e-2}
    for dtype, bound in bounds.items():
        path = str(tmp_path / f"{dtype}.gguf")
        keras_mft.export_to_gguf(model, path, dtype=dtype)
        reader, loaded = read_back(path)
        kinds = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
        assert kinds["blk.0.attn_q.weight"] == {"float16": "F16", "bfloat16": "BF16"}.get(
            dtype, "Q8_0"
        )
        assert kinds["blk.0.attn_norm.weight"] == "F32"
        got = logits_of(loaded, batch)
        error = np.max(np.abs(got - expected))
        assert error < bound * np.max(np.abs(expected)), dtype
        # The same greedy token wherever the rounding cannot swap the top two.
        top_two = np.sort(expected, -1)[..., -2:]
        clear = top_two[..., 1] - top_two[..., 0] > 2 * error
        assert clear.mean() > 0.5, dtype
        np.testing.assert_array_equal(np.argmax(got, -1)[clear], np.argmax(expected, -1)[clear])


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_a_sentence_piece_tokenizer_is_written_as_llama_2s(family, tmp_path):
    proto = sentence_piece_proto()
    tokenizer_class = {"llama": "LlamaTokenizer", "mistral": "MistralTokenizer"}[family]
    tokenizer = getattr(keras_hub.models, tokenizer_class)(proto=proto)
    model = small_causal_lm(family, tokenizer)  # untied: an output.weight
    files = keras_mft.export_to_gguf(model, str(tmp_path / "model.gguf"), dtype="float32")
    # Mistral is llama.cpp's `llama` without the sliding window: the same
    # attention within a context no longer than the window.
    reader, loaded = read_back(files["gguf"])
    batch = token_batch(sequence_length=12)
    np.testing.assert_array_equal(logits_of(loaded, batch), logits_of(model, batch))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    # The pieces, scores and types as SentencePiece itself reads its model.
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    size = processor.get_piece_size()
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [processor.id_to_piece(i) for i in range(size)]
    np.testing.assert_array_equal(
        fields["tokenizer.ggml.scores"], [processor.get_score(i) for i in range(size)]
    )
    types = fields["tokenizer.ggml.token_type"]
    assert [i for i in range(size) if types[i] == gguf.TokenType.CONTROL] == [
        i for i in range(size) if processor.is_control(i)
    ]
    assert [i for i in range(size) if types[i] == gguf.TokenType.BYTE] == [
        i for i in range(size) if processor.is_byte(i)
    ]
    assert types[processor.unk_id()] == gguf.TokenType.UNKNOWN
    assert fields["tokenizer.ggml.unknown_token_id"] == processor.unk_id()
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (
        processor.bos_id(),
        processor.eos_id(),
    )
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.add_space_prefix"] is True
    assert (tmp_path / "Modelfile").read_text().endswith('PARAMETER stop "</s>"\n')
    if family == "mistral":
        assert fields["llama.context_length"] == model.backbone.sliding_window


def test_qwen3_is_written_as_llama_cpps_qwen3(tmp_path):
    model = small_causal_lm("qwen3", qwen3_tokenizer())
    path = str(tmp_path / "model.gguf")
    keras_mft.export_to_gguf(model, path, dtype="float32")
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "qwen3"
    assert fields["qwen3.attention.key_length"] == model.backbone.head_dim
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert "tokenizer.ggml.bos_token_id" not in fields  # Qwen3 has no start token
    tensors = {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors}
    attention = model.backbone.get_layer("transformer_layer_0")._self_attention_layer
    # Qwen3's rotary order is Hugging Face's: no rows permuted.
    query = to_numpy(attention._query_dense.kernel)
    np.testing.assert_array_equal(
        tensors["blk.0.attn_q.weight"], query.reshape(query.shape[0], -1).T
    )
    np.testing.assert_array_equal(
        tensors["blk.0.attn_k_norm.weight"], to_numpy(attention._key_dense_layer_norm.scale)
    )
    assert "output.weight" not in tensors  # tied


def test_refusals_name_what_is_missing(tmp_path):
    path = str(tmp_path / "model.gguf")
    with pytest.raises(ValueError, match="holds masks: call `keras_mft.bake"):
        keras_mft.export_to_gguf(keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:1"), path)
    with pytest.raises(
        ValueError, match="Mistral and Qwen3, not GPT2Backbone.*export_to_transformers"
    ):
        keras_mft.export_to_gguf(small_causal_lm("gpt2"), path)
    no_tokenizer = keras_mft.tiny_smollm2()
    no_tokenizer.preprocessor = None
    with pytest.raises(ValueError, match="SentencePiece tokenizers.*byte-level BPE.*not NoneType"):
        keras_mft.export_to_gguf(no_tokenizer, path)
    with pytest.raises(ValueError, match="`dtype` is one of float32, float16, bfloat16, q8_0"):
        keras_mft.export_to_gguf(keras_mft.tiny_smollm2(), path, dtype="q4_0")
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.one_backend("torch")  # the command calls export_to_gguf, tested above on each
def test_bake_writes_gguf_and_a_modelfile(tmp_path, capsys):
    keras_mft.save_preset(keras_mft.tiny_smollm2(), tmp_path / "preset")
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2", seed=0)
    keras_mft.save_masks(model, tmp_path / "masks.mask")
    out = tmp_path / "baked"
    argv = ["bake", "--preset", str(tmp_path / "preset"), "--masks", str(tmp_path / "masks.mask")]
    assert cli.main([*argv, "--out", str(out), "--format", "gguf", "--dtype", "float32"]) == 0
    assert "Ollama" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    _, loaded = read_back(str(out / "model.gguf"))
    batch = token_batch(sequence_length=8)
    baked = keras_mft.bake(model)
    np.testing.assert_array_equal(logits_of(loaded, batch), logits_of(baked, batch))
