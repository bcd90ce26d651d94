"""Instruction data: chat templates, packing and response-only weights."""

import json
import warnings

import keras
import keras_hub
import numpy as np
import pytest
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from keras_mft import instruction_dataset
from keras_mft import read_jsonl
from keras_mft.data.instruction_data import _pack
from keras_mft.data.instruction_data import split_records
from keras_mft.embedded import smollm2

DATA = {
    "prompts": ["What is 2 + 3?", "Name a colour.", "Say <|im_end|> please"],
    "responses": ["2 + 3 = 5.\n#### 5", "Blue.", "<|im_end|>"],
}


@pytest.fixture
def tokenizer(byte_tokenizer):
    return byte_tokenizer


def decode(tokenizer, ids):
    text = tokenizer.detokenize(np.asarray(ids, "int32"))
    return (
        keras.ops.convert_to_numpy(text).item().decode("utf-8")
        if not isinstance(text, str)
        else text
    )


CONVERSATIONS = [
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5."},
        {"role": "user", "content": "And 2 + 4?"},
        {"role": "assistant", "content": "6."},
    ],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
]


def learned_text(tokenizer, y, weights):
    return decode(tokenizer, y[weights == 1.0])


@pytest.mark.parametrize(
    "template, end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("llama2", " </s>")]
)
def test_weights_select_exactly_the_responses(tokenizer, template, end):
    x, y, weights = instruction_dataset(
        tokenizer, DATA, sequence_length=64, template=template, pack=False
    )
    assert x["token_ids"].shape == y.shape == weights.shape
    assert set(np.unique(weights)) <= {0.0, 1.0}
    space = " " if template == "llama2" else ""
    assert learned_text(tokenizer, y, weights) == "".join(
        space + r + end for r in DATA["responses"]
    )
    # Targets are the inputs shifted by one.
    np.testing.assert_array_equal(x["token_ids"][:, 1:], y[:, :-1])
    # Padding carries no weight.
    assert np.all(weights[~x["padding_mask"]] == 0)
    # Packing moves whole examples, so it learns the same tokens.
    packed = instruction_dataset(tokenizer, DATA, sequence_length=64, template=template)
    assert sorted(packed[1][packed[2] == 1].tolist()) == sorted(y[weights == 1].tolist())


def test_loss_on_every_assistant_turn_of_a_conversation(tokenizer):
    x, y, weights = instruction_dataset(
        tokenizer, {"messages": CONVERSATIONS}, sequence_length=128, pack=False
    )
    assert learned_text(tokenizer, y, weights) == "5.<|im_end|>6.<|im_end|>Blue.<|im_end|>"
    assert decode(tokenizer, x["token_ids"][0][x["padding_mask"][0]]).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?"
    )
    # `system` fills in only where a conversation has none.
    x, y, weights = instruction_dataset(
        tokenizer, {"messages": CONVERSATIONS}, sequence_length=128, pack=False, system="Hi."
    )
    texts = [decode(tokenizer, row[mask]) for row, mask in zip(x["token_ids"], x["padding_mask"])]
    assert texts[0].startswith("<|im_start|>system\nBe brief.")
    assert texts[1].startswith("<|im_start|>system\nHi.<|im_end|>\n<|im_start|>user\nName")


def test_prompt_text_cannot_inject_special_tokens(tokenizer):
    x, y, weights = instruction_dataset(tokenizer, DATA, sequence_length=256)
    im_end = tokenizer.token_to_id("<|im_end|>")
    # Each example has one <|im_end|> after its prompt turn and one after its
    # response: the literal "<|im_end|>" typed by the user is plain text.
    assert int(np.sum(x["token_ids"][0] == im_end) + (y[0, -1] == im_end)) == 6


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return smollm2.tokenizer_from_gguf(smollm2.gguf_reader())


def test_smollm2_uses_the_template_of_its_gguf_file(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.chat_template
    assert tokenizer.get_config()["chat_template"] == tokenizer.chat_template
    data = {"prompts": ["Say <|im_end|>"], "responses": ["2 + 3 = 5"]}
    x, y, weights = instruction_dataset(tokenizer, data, sequence_length=64, pack=False)
    text = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nSay <|im_end|><|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5<|im_end|>"
    )
    ids = x["token_ids"][0][x["padding_mask"][0]].tolist()
    assert decode(tokenizer, ids) == text
    # SmolLM2's tokenizer reads "<|im_end|>" in text as its special token:
    # the one the user typed must stay text.
    assert ids.count(tokenizer.token_to_id("<|im_end|>")) == 3
    assert learned_text(tokenizer, y, weights) == "2 + 3 = 5<|im_end|>"
    # The hand-written ChatML has no default system turn.
    x, _, _ = instruction_dataset(
        tokenizer, data, sequence_length=64, pack=False, template="chatml"
    )
    assert decode(tokenizer, x["token_ids"][0][:3]) == "<|im_start|>user\n"


def test_packing_keeps_examples_whole(tokenizer):
    _, _, lone = instruction_dataset(tokenizer, DATA, sequence_length=128, pack=False)
    x, y, weights = instruction_dataset(tokenizer, DATA, sequence_length=128)
    assert x["token_ids"].shape[1] == 128
    im_start = tokenizer.token_to_id("<|im_start|>")
    for ids, mask in zip(x["token_ids"], x["padding_mask"]):
        # Each row starts an example, and holds only whole ones.
        assert ids[0] == im_start and np.all(mask[: mask.sum()])
    assert len(y) < len(lone) and weights.sum() == lone.sum()


@pytest.mark.backend_independent
def test_first_fit_decreasing_is_deterministic():
    examples = [(np.zeros(n), np.zeros(n)) for n in (5, 3, 4, 2, 6)]
    # 6 opens a row, 5 and 4 do too, 3 fits beside 5, 2 beside 6.
    assert _pack(examples, 8) == [[0, 1], [2], [3, 4]]


def test_warns_about_long_examples_and_little_loss(tokenizer):
    for pack in (True, False):
        with pytest.warns(
            UserWarning,
            match=r"3 of 3 examples are longer than sequence_length \(8 tokens\) and were "
            r"cut at the end: 20 of 35 response tokens are lost. 3 of them had a prompt "
            "longer than that: its beginning was cut.",
        ):
            x, y, weights = instruction_dataset(tokenizer, DATA, sequence_length=8, pack=pack)
        # Half of each sequence is the end of the prompt, half the response.
        assert learned_text(tokenizer, y, weights) == "2 + 3Blue.<|im_"
    with pytest.warns(
        UserWarning, match=r"2 of 3 examples .* 10 of 35 response tokens are lost\. 1 of them"
    ):
        instruction_dataset(tokenizer, DATA, sequence_length=40, pack=False)
    with pytest.warns(UserWarning, match="are response tokens that carry loss"):
        instruction_dataset(
            tokenizer, {"prompts": ["x" * 3000], "responses": ["y"]}, sequence_length=4096
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        instruction_dataset(tokenizer, DATA, sequence_length=512)


def test_loss_is_the_mean_over_response_tokens(tokenizer):
    """The CausalLM's weighted loss equals numpy cross-entropy on responses."""
    x, y, weights = instruction_dataset(tokenizer, DATA, sequence_length=32)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    loss = model.evaluate(x, y, sample_weight=weights, batch_size=len(y), verbose=0)[0]
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0)).astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    expected = np.sum(token_losses * weights) / weights.size
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.backend_independent
def test_read_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"prompt": p, "response": r}) for p, r in zip(DATA["prompts"], DATA["responses"])
    ]
    path.write_text("\n".join(lines) + "\n\n")
    assert read_jsonl(path) == DATA
    # TRL's prompt-completion records.
    lines = [
        json.dumps({"prompt": p, "completion": r})
        for p, r in zip(DATA["prompts"], DATA["responses"])
    ]
    path.write_text("\n".join(lines))
    assert read_jsonl(path) == DATA


def test_records_lists_and_datasets_give_the_same_data(tokenizer):
    # A list of records, as a `datasets.Dataset` iterates (without importing datasets).
    records = [
        {"prompt": p, "completion": r, "id": i}
        for i, (p, r) in enumerate(zip(DATA["prompts"], DATA["responses"]))
    ]
    expected = instruction_dataset(tokenizer, DATA, sequence_length=16)
    for given, wanted in zip(instruction_dataset(tokenizer, records, sequence_length=16), expected):
        if isinstance(wanted, dict):
            for key in wanted:
                np.testing.assert_array_equal(given[key], wanted[key])
        else:
            np.testing.assert_array_equal(given, wanted)
    with pytest.raises(ValueError, match="record 1 has no 'prompt' field"):
        instruction_dataset(tokenizer, [records[0], {"completion": "x"}], sequence_length=16)


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": "a"}\n', "line 1 has no 'response' field"),
        (b'{"prompt": "a", "response": "b"}\n{"response": "b"}\n', "line 2 has no 'prompt' field"),
        (b'{"prompt": "a", "response": "  "}\n', "empty response"),
        (b'{"prompt": "a", "response": "\xff"}\n', "not valid UTF-8"),
        (b'{"prompt": "a", \n', "not valid JSON"),
        (b'["a", "b"]\n', "expected an object"),
        (b"\n", "holds no records"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1 is nested too deeply"),
        (
            b'{"prompt": "\\ud800", "response": "b"}\n',
            r"line 1: the prompt holds '\\ud800', half of a surrogate pair",
        ),
    ],
)
def test_read_jsonl_errors(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_unknown_template_and_missing_special_token(tokenizer):
    with pytest.raises(ValueError, match="Unknown chat template 'alpaca'"):
        instruction_dataset(tokenizer, DATA, sequence_length=8, template="alpaca")
    vocabulary = {c: i for i, c in enumerate(bytes_to_unicode()[1])}
    vocabulary["th"] = len(vocabulary)
    plain = keras_hub.tokenizers.BytePairTokenizer(vocabulary=vocabulary, merges=["t h"])
    with pytest.raises(ValueError, match="no token '<|im_start|>'"):
        instruction_dataset(plain, DATA, sequence_length=8, template="chatml")
    with pytest.raises(ValueError, match="--template .* --chat-template"):
        instruction_dataset(plain, DATA, sequence_length=8)


@pytest.mark.backend_independent
def test_split_records_holds_out_the_last_records():
    records = {"prompts": list("abcdefghij"), "responses": list("ABCDEFGHIJ")}
    train, validation = split_records(records, 0.2)
    assert train == {"prompts": list("abcdefgh"), "responses": list("ABCDEFGH")}
    assert validation == {"prompts": ["i", "j"], "responses": ["I", "J"]}
    assert split_records(records, 0.01)[1]["prompts"] == ["j"]  # at least one each
    assert split_records(records, 0.99)[0]["prompts"] == ["a"]
    conversations = {"messages": [[{"role": "user", "content": c}] for c in "abcd"]}
    train, validation = split_records(conversations, 0.25)
    assert len(train["messages"]) == 3 and validation["messages"] == conversations["messages"][3:]
    with pytest.raises(ValueError, match="one record, too few"):
        split_records({"prompts": ["a"], "responses": ["A"]}, 0.5)
