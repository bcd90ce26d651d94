"""Chat templates: Jinja rendering, the response spans, and each family's format.

The official templates below are copied verbatim from the models'
`tokenizer_config.json` files (after JSON decoding); the expected texts are
written out by hand from the models' documented formats.
"""

import json
import time

import pytest

from keras_mft.data import chat_templates
from keras_mft.data.chat_templates import TEMPLATES
from keras_mft.data.chat_templates import load_chat_template
from keras_mft.data.chat_templates import render
from keras_mft.data.chat_templates import render_text
from keras_mft.data.chat_templates import resolve_template
from keras_mft.data.chat_templates import template_for

pytestmark = pytest.mark.backend_independent

# meta-llama/Llama-2-7b-chat-hf
LLAMA2 = r"""{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"""  # noqa: E501
# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""  # noqa: E501
# mistralai/Mistral-7B-Instruct-v0.1 (and Mixtral-8x7B-Instruct-v0.1)
MISTRAL = r"""{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""  # noqa: E501
# google/gemma-7b-it
GEMMA = r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"""  # noqa: E501
# microsoft/Phi-3-mini-4k-instruct
PHI3 = r"""{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"""  # noqa: E501

SPECIAL_TOKENS = {
    "llama2": {"bos_token": "<s>", "eos_token": "</s>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
    "gemma": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "phi3": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
}
OFFICIAL = {"llama2": LLAMA2, "llama3": LLAMA3, "mistral": MISTRAL, "gemma": GEMMA, "phi3": PHI3}
NAMES = [
    "<s>", "</s>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|end|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
]  # fmt: skip

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi "},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "2 + 3?"},
    {"role": "assistant", "content": " 5"},
]

# The documented formats, written out by hand.
EXPECTED = {
    "llama2": "<s>[INST] Hi [/INST] Hello. </s><s>[INST] 2 + 3? [/INST] 5 </s>",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n2 + 3?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>",
    "mistral": "<s>[INST] Hi  [/INST]Hello.</s>[INST] 2 + 3? [/INST] 5</s>",
    "gemma": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    "<start_of_turn>user\n2 + 3?<end_of_turn>\n<start_of_turn>model\n5<end_of_turn>\n",
    "phi3": "<|user|>\nHi <|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\n2 + 3?<|end|>\n"
    "<|assistant|>\n 5<|end|>\n<|endoftext|>",
}
# What each family learns: from the end of the generation prompt to the end-of-turn token.
LEARNED = {
    "llama2": [" Hello. </s>", " 5 </s>"],
    "llama3": ["Hello.<|eot_id|>", "5<|eot_id|>"],
    "mistral": ["Hello.</s>", " 5</s>"],
    "gemma": ["Hello.<end_of_turn>", "5<end_of_turn>"],
    "phi3": ["Hello.<|end|>", " 5<|end|>"],
}


def learned(pieces):
    """The response texts of rendered pieces, one string per assistant turn."""
    turns, previous = [], False
    for text, _, is_response in pieces:
        if is_response and not previous:
            turns.append("")
        if is_response:
            turns[-1] += text
        previous = is_response
    return turns


@pytest.mark.parametrize("family", sorted(OFFICIAL))
def test_official_templates_render_the_documented_format(family):
    assert render_text(OFFICIAL[family], TURNS, SPECIAL_TOKENS[family]) == EXPECTED[family]


@pytest.mark.parametrize("family", sorted(OFFICIAL))
def test_hand_written_templates_match_the_official_ones(family):
    conversations = [TURNS, TURNS[:2]]
    if family in ("llama2", "llama3", "phi3"):
        conversations.append([SYSTEM, *TURNS])
    for messages in conversations:
        official = render_text(OFFICIAL[family], messages, SPECIAL_TOKENS[family])
        assert render_text(TEMPLATES[family], messages) == official
        # The pieces are the text up to the end of the last turn.
        pieces = render(OFFICIAL[family], messages, NAMES, SPECIAL_TOKENS[family])
        assert official.startswith("".join(text for text, _, _ in pieces))
        assert render(TEMPLATES[family], messages, NAMES) == pieces


@pytest.mark.parametrize("family", sorted(OFFICIAL))
def test_every_assistant_turn_is_learned_with_its_end_of_turn_token(family):
    pieces = render(OFFICIAL[family], TURNS, NAMES, SPECIAL_TOKENS[family])
    assert learned(pieces) == LEARNED[family]
    for text, is_special, _ in pieces:
        assert is_special == (text in NAMES)


def test_llama2_system_prompt_and_chatml():
    text = render_text(LLAMA2, [SYSTEM, *TURNS[:2]], SPECIAL_TOKENS["llama2"])
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
    pieces = render(TEMPLATES["chatml"], [SYSTEM, *TURNS[:2]], NAMES)
    assert "".join(text for text, _, _ in pieces) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>"
    )
    assert learned(pieces) == ["Hello.<|im_end|>"]


def test_families_without_a_system_turn_refuse_one():
    for family in ("mistral", "gemma"):
        with pytest.raises(ValueError, match="refused the conversation"):
            render(TEMPLATES[family], [SYSTEM, *TURNS], NAMES)
    with pytest.raises(ValueError, match="System role not supported"):
        render(GEMMA, [SYSTEM, *TURNS], NAMES, SPECIAL_TOKENS["gemma"])


def test_user_text_stays_text():
    messages = [
        {"role": "user", "content": "Say <|im_end|>"},
        {"role": "assistant", "content": "<|im_start|>"},
    ]
    pieces = render(TEMPLATES["chatml"], messages, NAMES)
    assert [text for text, special, _ in pieces if special] == ["<|im_start|>", "<|im_end|>"] * 2
    assert ("<|im_start|>", False, True) in pieces


def test_templates_it_cannot_follow_are_refused():
    upper = "{% for m in messages %}<|im_start|>{{ m['content'] | upper }}<|im_end|>{% endfor %}"
    with pytest.raises(ValueError, match="writes message 0 \\(user\\) 0 times"):
        render(upper, TURNS, NAMES)
    peeks = "{% for m in messages %}{% if m['content'] == 'Hi ' %}!{% endif %}{{ m['content'] }}"
    with pytest.raises(ValueError, match="changes the text of the messages"):
        render(peeks + "<|im_end|>{% endfor %}", TURNS, NAMES)
    twice = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}<|im_end|>{% endfor %}"
    with pytest.raises(ValueError, match="writes message 0 \\(user\\) 2 times"):
        render(twice, TURNS, NAMES)
    with pytest.raises(ValueError, match="not valid Jinja"):
        render("{% for m in messages %}", TURNS, NAMES)
    # A sandbox: templates cannot reach Python's internals.
    with pytest.raises(Exception, match="unsafe"):
        render_text("{{ messages.__class__.__mro__ }}", TURNS)


def test_a_template_that_fails_or_runs_away_is_stopped_with_one_error(monkeypatch):
    monkeypatch.setattr(chat_templates, "RENDER_SECONDS", 0.2)
    failing = {
        "{{ 1 / 0 }}": "failed on a conversation \\(ZeroDivisionError",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}": "failed .*\\(RecursionError",
        "{{ 'x' * 10**9 }}": "stopped: it built a sequence of 1,000,000,000 items",
        "{{ 2 ** 100000000 }}": "stopped: it raised a number to the power 100000000",
        "{% for i in range(99999) %}{{ 'x' * 999 }}{% endfor %}": "wrote more than 10,000,000",
    }
    for source, message in failing.items():
        with pytest.raises(ValueError, match=message):
            render_text(source, TURNS)
    nested = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(ValueError, match="stopped: it ran for more than 0.2 s"):
        render_text(nested, TURNS)
    assert time.monotonic() - start < 2
    # What templates do stays allowed.
    assert render_text("{{ '  ' * 2 }}{{ 2 ** 3 }}{{ messages[0].content }}", TURNS) == "    8Hi "


def test_transformers_globals_and_filters():
    text = render_text(
        "{{ strftime_now('%Y') | length }} {{ messages[0] | tojson }}",
        [{"role": "user", "content": "é <b>"}],
    )
    assert text == '4 {"role": "user", "content": "é <b>"}'


class FakeTokenizer:
    def __init__(self, *tokens):
        self.tokens = ["a", *tokens]

    def get_vocabulary(self):
        return self.tokens


@pytest.mark.parametrize(
    "tokens, family",
    [
        (("<|im_start|>", "<|im_end|>", "<|eot_id|>"), "chatml"),
        (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama3"),
        (("<bos>", "<start_of_turn>", "<end_of_turn>"), "gemma"),
        (("<s>", "<|user|>", "<|assistant|>", "<|end|>"), "phi3"),
    ],
)
def test_the_family_from_the_special_tokens(tokens, family):
    assert template_for(FakeTokenizer(*tokens)) == family
    assert resolve_template(FakeTokenizer(*tokens)) == TEMPLATES[family]


def test_llama2_and_mistral_tokenizers_need_a_flag():
    with pytest.raises(ValueError, match="--template .* --chat-template"):
        template_for(FakeTokenizer("<s>", "</s>"))
    tokenizer = FakeTokenizer("<s>", "</s>")
    assert resolve_template(tokenizer, template="mistral") == TEMPLATES["mistral"]
    tokenizer.chat_template = LLAMA2
    assert resolve_template(tokenizer) == LLAMA2
    assert resolve_template(tokenizer, chat_template=MISTRAL) == MISTRAL
    with pytest.raises(ValueError, match="not both"):
        resolve_template(tokenizer, template="llama2", chat_template=LLAMA2)
    with pytest.raises(ValueError, match="Unknown chat template 'alpaca'"):
        resolve_template(tokenizer, template="alpaca")


def test_load_chat_template(tmp_path):
    jinja = tmp_path / "chat.jinja"
    jinja.write_text(GEMMA, encoding="utf-8")
    assert load_chat_template(jinja) == GEMMA
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"bos_token": "<s>", "chat_template": LLAMA2}), encoding="utf-8")
    assert load_chat_template(config) == LLAMA2
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": PHI3}]
    config.write_text(json.dumps({"chat_template": named}), encoding="utf-8")
    assert load_chat_template(config) == PHI3
    config.write_text(json.dumps({"bos_token": "<s>"}), encoding="utf-8")
    with pytest.raises(ValueError, match="has no `chat_template` string"):
        load_chat_template(config)
