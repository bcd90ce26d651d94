"""Chat templates: how a conversation becomes text, and which text the model learns.

A chat template is a Jinja template, as in Hugging Face's `tokenizer_config.json`
and in GGUF files (`tokenizer.chat_template`). `render` runs it the way
`transformers` does (a sandboxed Jinja environment with `trim_blocks`,
`lstrip_blocks`, `raise_exception` and `strftime_now`) and returns the
conversation as pieces: special-token names, to be looked up by id, and plain
text, marked as response or not.

The template is first rendered with each message's content replaced by a unique
marker. Where the markers land tells where each message's text is, so that:

- special-token names are split out of the template's own text only: a user
  who types `<|im_end|>` gets plain text, never the control token;
- each assistant turn's loss span is exact: it starts where the template's
  generation prompt ends (`add_generation_prompt=True`, e.g. after
  `<|im_start|>assistant\\n`) and ends with the first special token after the
  content (the end-of-turn token, e.g. `<|im_end|>`).

The conversation is then rendered once more with the real contents, and the
two must agree; a template that rewrites message text in a way the markers
cannot follow is refused rather than guessed at.

A template is the user's code, run with limits: a render that takes more
than `RENDER_SECONDS` or writes more than `RENDER_CHARACTERS` is stopped, and
any error it raises becomes a `ValueError` that says the template failed.

`TEMPLATES` holds hand-written templates for models whose tokenizer carries
none (KerasHub presets): each reproduces its family's official template for
system, user and assistant messages, without any default system prompt.
"""

import contextvars
import datetime
import functools
import json
import math
import os
import re
import time

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.sandbox import SecurityError

TEMPLATES = {
    # SmolLM2, Qwen and other ChatML models.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Llama 2 chat: the system prompt goes inside the first [INST].
    "llama2": (
        "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' %}"
        "{% for message in messages if message['role'] != 'system' %}"
        "{% if message['role'] == 'user' %}"
        "{% set text = message['content'] %}"
        "{% if system and loop.first %}"
        "{% set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text %}"
        "{% endif %}"
        "{{ '<s>[INST] ' + text.strip() + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'].strip() + ' </s>' }}{% endif %}"
        "{% endfor %}"
    ),
    # Llama 3 instruct (3.0; later versions add a dated system header).
    "llama3": (
        "<|begin_of_text|>"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{ message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    # Mistral 7B Instruct v0.1 and v0.2 (and Mixtral): no system turn.
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('The mistral template has no system turn.') }}{% endif %}"
        "<s>"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + '</s>' }}{% endif %}"
        "{% endfor %}"
    ),
    # Gemma and Gemma 2 instruct: the assistant is "model"; no system turn.
    "gemma": (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('The gemma template has no system turn.') }}{% endif %}"
        "<bos>"
        "{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    # Phi-3 and Phi-3.5 instruct.
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}<|endoftext|>{% endif %}"
    ),
}

# Tokens that only a model trained on that family's chat format has. Llama 2
# and Mistral have none ([INST] is plain text to them), so they are never
# guessed. ChatML comes first: its tokens are added by ChatML fine-tunes of
# other families (a Llama 3 with <|im_start|> was trained on ChatML).
TURN_TOKENS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "phi3": ("<|user|>", "<|assistant|>", "<|end|>"),
}

# The control tokens of the families above. Written by a template, each must
# be one token of the tokenizer (besides the tokenizer's own special tokens).
KNOWN_SPECIAL_TOKENS = (
    *(token for tokens in TURN_TOKENS.values() for token in tokens),
    *("<|begin_of_text|>", "<|end_of_text|>", "<s>", "</s>", "<bos>", "<eos>"),
    *("<|system|>", "<|endoftext|>"),
)
# Control tokens of Mistral's later tokenizers, and plain text to its first ones.
OPTIONAL_SPECIAL_TOKENS = ("[INST]", "[/INST]")

# Marks where message `i`'s content lands. Letters and digits only, so that
# filters such as `trim` or `upper` cannot split it; the padding shows
# whether the template strips the content.
_PADDING = "\t \t"


def _marker(i):
    return f"kerasmftcontent{i}x"


def check_template(name):
    if name not in TEMPLATES:
        raise ValueError(
            f"Unknown chat template {name!r}. Choose one of {sorted(TEMPLATES)} "
            "('chatml' for SmolLM2 and Qwen), or pass the model's own Jinja "
            "template as `chat_template` (--chat-template FILE)."
        )


def template_for(tokenizer):
    """The hand-written template whose turn tokens the tokenizer has, or an error."""
    vocabulary = set(tokenizer.get_vocabulary())
    for name, tokens in TURN_TOKENS.items():
        if all(token in vocabulary for token in tokens):
            return name
    raise ValueError(
        "The tokenizer has no chat template of its own, and its special tokens do "
        "not name a chat format (Llama 2 and Mistral share theirs). Pass the "
        "model's template: --template one of "
        f"{sorted(TEMPLATES)} (`template=` in Python), or the model's own "
        "Jinja template with --chat-template tokenizer_config.json (`chat_template=`)."
    )


def resolve_template(tokenizer, template=None, chat_template=None):
    """The Jinja source to use: the one asked for, else the tokenizer's own,
    else the hand-written one its special tokens name."""
    if template is not None and chat_template is not None:
        raise ValueError(
            "Pass `template` (a hand-written format) or `chat_template` (a Jinja "
            "template), not both."
        )
    if template is not None:
        check_template(template)
        return TEMPLATES[template]
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ValueError(
                "`chat_template` must be the text of a Jinja chat template. To read "
                "one from a file, use `keras_mft.chat_templates.load_chat_template`."
            )
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    return own or TEMPLATES[template_for(tokenizer)]


def load_chat_template(path):
    """The chat template in a `.jinja` file or a Hugging Face `tokenizer_config.json`."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    if not str(path).endswith(".json"):
        return text
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error.msg}.") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    # Some checkpoints hold several named templates; "default" is the chat one.
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template}
        template = named.get("default")
    if not isinstance(template, str):
        raise ValueError(
            f"{path} has no `chat_template` string. Pass a tokenizer_config.json "
            "that has one, or the template itself in a .jinja file."
        )
    return template


def checkpoint_chat_template(directory):
    """The chat template of a Hugging Face checkpoint directory, or None if it has none."""
    config = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(config):
        return None
    try:
        return load_chat_template(config)
    except ValueError:  # a checkpoint without a template: the fallbacks decide
        return None


# Far above what a chat template needs for one conversation.
RENDER_SECONDS = 5.0
RENDER_CHARACTERS = 10_000_000
_deadline = contextvars.ContextVar("deadline", default=math.inf)


class _LimitReached(SecurityError):
    pass


def _check_time():
    if time.monotonic() > _deadline.get():
        raise _LimitReached(f"ran for more than {RENDER_SECONDS:g} s")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox, which also checks the time at every call, attribute and
    item a template reads, and refuses `*` and `**` results past the limits."""

    intercepted_binops = frozenset({"*", "**"})

    def call(self, context, obj, /, *args, **kwargs):
        _check_time()
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _check_time()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        _check_time()
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise _LimitReached(f"raised a number to the power {right}")
        sizes = [len(v) * n for v, n in ((left, right), (right, left)) if _repeats(v, n)]
        if sizes and sizes[0] > RENDER_CHARACTERS:
            raise _LimitReached(f"built a sequence of {sizes[0]:,} items")
        return super().call_binop(context, operator, left, right)


def _repeats(value, count):
    return isinstance(value, (str, list, tuple)) and isinstance(count, int)


@functools.lru_cache(maxsize=16)
def _compile(source):
    """The template, compiled as `transformers` compiles chat templates."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own `tojson` escapes HTML characters; transformers' does not.
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    environment = _BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ValueError(
            f"The chat template is not valid Jinja (line {error.lineno}: {error.message})."
        ) from None


def render_text(source, messages, variables=None, add_generation_prompt=False):
    """The template's text for `messages`, as `apply_chat_template(tokenize=False)` gives it."""
    template = _compile(source)
    token = _deadline.set(time.monotonic() + RENDER_SECONDS)
    pieces, size = [], 0
    try:
        for piece in template.generate(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **(variables or {}),
        ):
            size += len(piece)
            if size > RENDER_CHARACTERS:
                raise _LimitReached(f"wrote more than {RENDER_CHARACTERS:,} characters")
            _check_time()
            pieces.append(piece)
    except _LimitReached as error:
        raise ValueError(
            f"The chat template was stopped: it {error} on one conversation."
        ) from None
    except jinja2.exceptions.TemplateError as error:
        raise ValueError(f"The chat template refused the conversation: {error}") from None
    except Exception as error:  # the template is the user's code: its failure is bad input
        raise ValueError(
            f"The chat template failed on a conversation ({type(error).__name__}: {error})."
        ) from None
    finally:
        _deadline.reset(token)
    return "".join(pieces)


def render(source, messages, special_tokens=(), variables=None):
    """The pieces of one conversation, in order.

    Args:
        source: the Jinja chat template.
        messages: `[{"role": ..., "content": ...}]`, ending with an assistant turn.
        special_tokens: names that are one token each when the template writes them.
        variables: other template variables, e.g. `{"bos_token": "<s>"}`.

    Returns:
        A list of `(text, is_special, is_response)`. Special pieces are token
        names to look up; the others are plain text, and consecutive plain
        pieces are tokenized together. The response pieces (each assistant
        turn, its end-of-turn token included) carry the loss. Text the template
        writes after the last assistant turn (a newline, an end-of-text token)
        is left out: it carries no loss and would only separate packed examples.
    """
    marked = [
        {"role": m["role"], "content": _PADDING + _marker(i) + _PADDING}
        for i, m in enumerate(messages)
    ]
    text = render_text(source, marked, variables)
    slots = _find_contents(text, messages)
    expected = _fill(text, slots)
    if render_text(source, messages, variables) != expected:
        raise ValueError(
            "The chat template changes the text of the messages in a way keras-mft "
            "cannot follow, so it cannot tell which tokens are the responses. "
            "Choose a hand-written format with --template (`template=`)."
        )
    specials = _special_pattern(special_tokens)
    spans = _response_spans(source, text, marked, slots, specials, variables)
    if not spans:
        raise ValueError("A conversation needs an assistant turn to learn from.")
    stop = spans[-1][1]
    cuts = {0, stop}
    cuts.update(position for slot in slots.values() for position in slot[:2])
    cuts.update(position for span in spans for position in span)
    if specials:
        for match in specials.finditer(text, 0, stop):
            cuts.update(match.span())
    starts = {slot[0]: slot for slot in slots.values()}
    pieces = []
    points = sorted(point for point in cuts if point <= stop)
    for start, end in zip(points, points[1:]):
        if start in starts and starts[start][1] == end:
            piece, is_special = starts[start][2], False
        else:
            piece = text[start:end]
            is_special = bool(specials and specials.fullmatch(piece))
        is_response = any(low <= start < high for low, high in spans)
        if piece:
            pieces.append((piece, is_special, is_response))
    return pieces


def _find_contents(text, messages):
    """{message index: (start, end, content as written)} in the marked rendering."""
    slots = {}
    for i, message in enumerate(messages):
        marker = _marker(i)
        if text.count(marker) != 1:
            raise ValueError(
                f"The chat template writes message {i} ({message['role']}) "
                f"{text.count(marker)} times instead of once, so keras-mft cannot "
                "tell which tokens are the responses. Choose a hand-written format "
                "with --template (`template=`)."
            )
        start = text.index(marker)
        end = start + len(marker)
        content = message["content"]
        # A template that trims the marker's padding trims the content too.
        if text[start - len(_PADDING) : start] == _PADDING:
            start -= len(_PADDING)
        else:
            content = content.lstrip()
        if text[end : end + len(_PADDING)] == _PADDING:
            end += len(_PADDING)
        else:
            content = content.rstrip()
        slots[i] = (start, end, content)
    return slots


def _fill(text, slots):
    """The marked rendering with each marker replaced by its content."""
    parts, position = [], 0
    for start, end, content in sorted(slots.values()):
        parts += [text[position:start], content]
        position = end
    return "".join(parts + [text[position:]])


def _response_spans(source, text, marked, slots, specials, variables):
    """[(start, end)] of each assistant turn in the marked rendering."""
    spans = []
    for i, message in enumerate(marked):
        if message["role"] != "assistant":
            continue
        start, end, _ = slots[i]
        # The response begins where the generation prompt ends, so text the
        # template puts between the two (Llama 2's space) is learned too.
        prompt = render_text(source, marked[:i], variables, add_generation_prompt=True)
        earliest = spans[-1][1] if spans else 0
        if text.startswith(prompt) and earliest <= len(prompt) <= start:
            start = len(prompt)
        # It ends with the first special token after the content, the end of
        # the turn, unless another message comes first.
        following = [slot[0] for slot in slots.values() if slot[0] >= end]
        limit = min(following, default=len(text))
        match = specials.search(text, end, limit) if specials else None
        spans.append((start, match.end() if match else end))
    return spans


def _special_pattern(names):
    """A regular expression matching any of `names`, the longest first."""
    names = sorted(set(names), key=len, reverse=True)
    return re.compile("|".join(re.escape(name) for name in names)) if names else None
