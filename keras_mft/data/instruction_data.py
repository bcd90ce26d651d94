"""Instruction data with the loss on the responses only, as in the MFT paper.

KerasHub's `CausalLMPreprocessor` puts the loss on every token. MFT, like the
supervised fine-tuning it continues, trains on conversations with the loss on
the assistant's turns alone. `instruction_dataset` applies a chat template,
tokenizes, packs and returns `(x, y, sample_weight)` arrays for `model.fit`,
with `sample_weight` 1 on response tokens and 0 elsewhere.
"""

import json
import os
import re
import warnings
from collections.abc import Iterable

import keras_hub
import numpy as np

from keras_mft.data.chat_templates import KNOWN_SPECIAL_TOKENS
from keras_mft.data.chat_templates import OPTIONAL_SPECIAL_TOKENS
from keras_mft.data.chat_templates import render
from keras_mft.data.chat_templates import resolve_template

ROLES = ("system", "user", "assistant")
RECORD_SHAPES = (
    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", '
    '"content": "..."}]} or {"prompt": "...", "response": "..."} (or "completion" '
    'instead of "response")'
)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads training records, one JSON object per line.

    A line is a conversation, `{"messages": [{"role": ..., "content": ...},
    ...]}` with roles "system" (first only), "user" and "assistant", ending
    with an assistant turn; or a prompt/response pair, `{"prompt": "...",
    "response": "..."}`, or `{"prompt": "...", "completion": "..."}` as TRL
    writes it. Other fields are ignored; blank lines are skipped.

    Returns:
        `{"prompts": [...], "responses": [...]}` when every line is a pair,
        else `{"messages": [...]}`, one list of messages per line (pairs
        become a user and an assistant turn).
    """
    records = []
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{where} is not valid UTF-8 (byte {error.start}). Save the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where} is not valid JSON: {error.msg}.") from None
            except RecursionError:
                raise ValueError(f"{where} is nested too deeply to be a record.") from None
            except ValueError as error:  # a number of more than 4,300 digits, ...
                raise ValueError(f"{where} cannot be read: {str(error).split(':')[0]}.") from None
            records.append(_record(record, where))
    if not records:
        raise ValueError(f"{path} holds no records.")
    if all(isinstance(record, tuple) for record in records):
        return {"prompts": [p for p, _ in records], "responses": [r for _, r in records]}
    return {"messages": [_as_messages(record) for record in records]}


def split_records(records, fraction):
    """`read_jsonl`'s records before and after their last `fraction` (at least one each)."""
    count = len(next(iter(records.values())))  # prompts, or messages
    held = min(max(1, round(count * fraction)), count - 1)
    if held < 1:
        raise ValueError("There is one record, too few to split off a part for validation.")
    first = {key: values[: count - held] for key, values in records.items()}
    return first, {key: values[count - held :] for key, values in records.items()}


def _record(record, where):
    """A `(prompt, response)` pair, or a list of messages."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object such as {RECORD_SHAPES}.")
    if "messages" in record:
        return _messages(record["messages"], where)
    return _pair(record, where)


def _pair(record, where):
    # TRL's prompt-completion datasets name the response "completion".
    answer = "response" if "response" in record or "completion" not in record else "completion"
    missing = [key for key in ("prompt", answer) if key not in record]
    if missing:
        raise ValueError(
            f"{where} has no {' or '.join(repr(k) for k in missing)} field. "
            f"Each line must look like {RECORD_SHAPES}."
        )
    prompt, response = record["prompt"], record[answer]
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"{where}: 'prompt' and '{answer}' must be strings.")
    _check_text(prompt, f"{where}: the prompt")
    _check_text(response, f"{where}: the response")
    if not response.strip():
        raise ValueError(
            f"{where} has an empty response: there is nothing to learn from it. "
            "Remove the line or fill in the response."
        )
    return prompt, response


def _messages(messages, where):
    """Checks a conversation and returns it as plain role/content dicts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of messages.")
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}, message {i}"
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f'{at}: expected {{"role": ..., "content": "..."}} with text content.')
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{at} has role {role!r}; use one of {list(ROLES)}.")
        if role == "system" and i:
            raise ValueError(f"{at}: a system message may only come first.")
        if role == "assistant" and not message["content"].strip():
            raise ValueError(f"{at} is an empty assistant turn: there is nothing to learn from it.")
        _check_text(message["content"], f"{at}: the content")
        checked.append({"role": role, "content": message["content"]})
    if checked[-1]["role"] != "assistant":
        raise ValueError(
            f"{where} ends with a {checked[-1]['role']} message: a conversation must end "
            "with the assistant turn it teaches."
        )
    return checked


def _check_text(text, what):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} holds {text[error.start]!r}, half of a surrogate pair, which is "
            "not text. Fix its \\u escape."
        ) from None


def _as_messages(record):
    if isinstance(record, tuple):
        prompt, response = record
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return record


def _conversations(data):
    """Lists of messages, from any of the data shapes `instruction_dataset` takes."""
    if isinstance(data, (str, os.PathLike)):
        data = read_jsonl(data)
    if not isinstance(data, dict):
        # A list of records, a `datasets.Dataset` or any other iterable of dicts.
        return [_as_messages(_record(r, f"record {i}")) for i, r in enumerate(data)]
    if "messages" in data:
        return [_messages(m, f"conversation {i}") for i, m in enumerate(data["messages"])]
    if "prompts" not in data or "responses" not in data:
        raise ValueError(
            'A dict of data must hold "prompts" and "responses", or "messages"; got '
            f"the keys {sorted(data)}. (Of a `datasets.DatasetDict`, pass one split.)"
        )
    prompts, responses = data["prompts"], data["responses"]
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(
            f"Got {len(prompts)} prompts and {len(responses)} responses: give "
            "one response per prompt, and at least one."
        )
    return [_as_messages(pair) for pair in zip(prompts, responses)]


def instruction_dataset(
    tokenizer: keras_hub.tokenizers.Tokenizer,
    data: dict | str | os.PathLike | Iterable[dict],
    *,
    sequence_length: int,
    template: str | None = None,
    chat_template: str | None = None,
    system: str | None = None,
    pack: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Tokenizes conversations for training with a response-only loss.

    Args:
        tokenizer: the model's KerasHub tokenizer
            (`model.preprocessor.tokenizer`).
        data: `{"prompts": [...], "responses": [...]}`; `{"messages":
            [conversation, ...]}`; a path to a JSONL file (see `read_jsonl`);
            or an iterable of records, each `{"messages": [...]}` or
            `{"prompt": ..., "response" (or "completion"): ...}`, e.g. a list
            of dicts or a `datasets.Dataset`. A conversation is a list of
            `{"role", "content"}` messages: an optional system message, then
            user and assistant turns, ending with an assistant turn.
        sequence_length: tokens per training sequence.
        template: a hand-written chat format, one of
            `keras_mft.chat_templates.TEMPLATES` (`"chatml"`, `"llama2"`,
            `"llama3"`, `"mistral"`, `"gemma"`, `"phi3"`).
        chat_template: the model's own Jinja chat template, as in its
            `tokenizer_config.json` (`load_chat_template` reads one). Without
            `template` or `chat_template`, the tokenizer's own template is
            used (the embedded SmolLM2 has the one in its GGUF file), else
            the hand-written format its special tokens name.
        system: a system prompt for conversations that have none.
        pack: if True, whole examples are packed into sequences of
            `sequence_length` tokens (first-fit decreasing), so little compute
            is spent on padding and no response is cut off from its prompt;
            if False, each example is one sequence, padded. Either way an
            example longer than a sequence is cut at its end, with a warning.

    Returns:
        `(x, y, sample_weight)`: `x` is `{"token_ids", "padding_mask"}`, `y`
        the next token at each position, `sample_weight` 1.0 where that next
        token belongs to an assistant turn (its end-of-turn token included)
        and 0.0 elsewhere. Pass them to `model.fit(x, y,
        sample_weight=sample_weight)` of a `CausalLM` built with
        `preprocessor=None`, or called on token ids.
    """
    source = resolve_template(tokenizer, template, chat_template)
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 2
    ):
        raise ValueError(f"`sequence_length` must be an int >= 2. Received: {sequence_length!r}")
    conversations = _conversations(data)
    if system:
        conversations = [_with_system(messages, system) for messages in conversations]
    examples = tokenize_conversations(tokenizer, conversations, source)
    window = sequence_length + 1
    examples = _truncate(examples, window)
    _warn_about_little_loss(examples)
    if pack:
        rows = [_concatenate([examples[i] for i in row]) for row in _pack(examples, window)]
    else:
        rows = examples

    return padded_arrays(rows, window)


def padded_arrays(rows, window):
    """`(x, y, sample_weight)` of rows of `(ids, weights)`, each padded to `window` tokens."""
    token_ids = np.zeros((len(rows), window), "int32")
    token_weights = np.zeros((len(rows), window), "float32")
    present = np.zeros((len(rows), window), bool)
    for row, (ids, weights) in enumerate(rows):
        token_ids[row, : len(ids)] = ids
        token_weights[row, : len(ids)] = weights
        present[row, : len(ids)] = True
    x = {"token_ids": token_ids[:, :-1], "padding_mask": present[:, :-1]}
    y = token_ids[:, 1:]
    sample_weight = token_weights[:, 1:] * present[:, 1:]
    return x, y, sample_weight


def _with_system(messages, system):
    if messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}] + messages


def _truncate(examples, window):
    """Cuts examples longer than a sequence, and says what was lost.

    The start of an example is its prompt, so cutting the end keeps the prompt
    whole and loses the end of the response. When even the prompt does not
    fit, its beginning is cut instead, and the last half of the sequence goes
    to the response: what a sequence holds is always learned from.
    """
    kept, cut, long_prompts, lost = [], 0, 0, 0
    for ids, weights in examples:
        if len(ids) > window:
            cut += 1
            # The loss starts at position 1: position 0 is never a target.
            first = int(np.argmax(weights))
            start = 0 if first < window - 1 else first - window // 2
            long_prompts += start > 0
            lost += int(np.sum(weights)) - int(np.sum(weights[start : start + window]))
            ids, weights = ids[start : start + window], weights[start : start + window]
        kept.append((ids, weights))
    if cut:
        total = sum(int(np.sum(weights)) for _, weights in examples)
        prompts = (
            f" {long_prompts} of them had a prompt longer than that: its beginning was cut."
            if long_prompts
            else ""
        )
        warnings.warn(
            f"{cut} of {len(examples)} examples are longer than sequence_length "
            f"({window - 1} tokens) and were cut at the end: {lost} of {total} response "
            f"tokens are lost.{prompts} Raise `sequence_length` or shorten them.",
            stacklevel=3,
        )
    return kept


def _warn_about_little_loss(examples):
    weighted = sum(float(np.sum(weights)) for _, weights in examples)
    total = sum(len(ids) for ids, _ in examples)
    if weighted < 0.01 * total:
        warnings.warn(
            f"Only {weighted:.0f} of {total} tokens ({weighted / total:.2%}) are response "
            "tokens that carry loss: training would spend almost all of its time on prompts.",
            stacklevel=3,
        )


def _pack(examples, window):
    """Rows of example indices, by first-fit decreasing.

    The longest example goes first, each into the first row with room for it,
    so every example stays whole. Rows list their examples in the data's
    order, and come in the order of their first example: the result is the
    same on every run.
    """
    lengths = [len(ids) for ids, _ in examples]
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], i))
    rows, room = [], np.zeros(len(examples), int)
    for i in order:
        fits = np.flatnonzero(room[: len(rows)] >= lengths[i])
        row = int(fits[0]) if fits.size else len(rows)
        if row == len(rows):
            rows.append([])
            room[row] = window
        rows[row].append(i)
        room[row] -= lengths[i]
    return sorted(sorted(row) for row in rows)


def _concatenate(examples):
    return (
        np.concatenate([ids for ids, _ in examples]),
        np.concatenate([weights for _, weights in examples]),
    )


def tokenize_examples(tokenizer, template, prompts, responses, system=None):
    """[(ids, weights)] of prompt/response pairs in a hand-written `template`."""
    conversations = [_as_messages(pair) for pair in zip(prompts, responses)]
    if system:
        conversations = [_with_system(messages, system) for messages in conversations]
    return tokenize_conversations(tokenizer, conversations, resolve_template(tokenizer, template))


def tokenize_conversations(tokenizer, conversations, source):
    """[(ids, weights)] per conversation: weights 1 on the assistant turns.

    Each run of plain text between special tokens is tokenized as one string,
    as the model saw it. Where a response starts or ends inside a run, the
    run's text up to that point is tokenized too: the tokens it shares with
    the whole run lie before the boundary, and a token that straddles the
    boundary belongs to the text after it.
    """
    vocabulary = set(tokenizer.get_vocabulary())
    specials = [*KNOWN_SPECIAL_TOKENS, *(getattr(tokenizer, "special_tokens", None) or ())]
    specials += [token for token in OPTIONAL_SPECIAL_TOKENS if token in vocabulary]
    variables = _template_variables(tokenizer)
    # Names the tokenizer may read as special tokens when they appear in text.
    in_vocabulary = [token for token in specials if token in vocabulary]
    examples = [
        _units(render(source, messages, specials, variables), in_vocabulary)
        for messages in conversations
    ]
    # One batch for the tokenizer: each text, then its prefixes up to each boundary.
    texts = [
        text[:cut]
        for units in examples
        for text, is_special, flags in units
        if not is_special
        for cut in [len(text), *_boundaries(flags)]
    ]
    tokenized = iter(tokenizer.tokenize(texts))
    special_ids = {}
    results = []
    for units in examples:
        ids, weights = [], []
        for text, is_special, flags in units:
            if is_special:
                ids.append(_special_id(tokenizer, text, special_ids))
                weights.append(float(flags[0]))
                continue
            piece = _ids(next(tokenized))
            starts = [_shared(_ids(next(tokenized)), piece) for _ in _boundaries(flags)]
            ids += piece
            weights += _token_weights(flags, starts, len(piece))
        results.append((np.array(ids, "int32"), np.array(weights, "float32")))
    return results


def _template_variables(tokenizer):
    """The special tokens Hugging Face templates refer to by name."""
    names = {"bos_token": "start_token", "eos_token": "end_token", "pad_token": "pad_token"}
    values = {name: getattr(tokenizer, attribute, None) for name, attribute in names.items()}
    return {name: value for name, value in values.items() if isinstance(value, str)}


def _units(pieces, specials):
    """Tokenization units `(text, is_special, flags)`: a special token's name,
    or plain text; `flags` holds one response flag per character.

    A special-token name inside plain text (typed by a user) is cut after its
    first character, so the tokenizer reads it as text, never as the token.
    """
    names = sorted(specials, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(name) for name in names)) if names else None
    units, text, flags = [], "", []
    for piece, is_special, is_response in [*pieces, ("", True, False)]:
        if not is_special:
            text += piece
            flags += [is_response] * len(piece)
            continue
        found = [m.start() + 1 for m in pattern.finditer(text)] if pattern else []
        cuts = [0, *found, len(text)]
        units += [(text[a:b], False, flags[a:b]) for a, b in zip(cuts, cuts[1:]) if a < b]
        if piece:
            units.append((piece, True, [is_response]))
        text, flags = "", []
    return units


def _boundaries(flags):
    """Where the response flag changes within a text."""
    return [i for i in range(1, len(flags)) if flags[i] != flags[i - 1]]


def _ids(tokens):
    return np.asarray(tokens, "int32").reshape(-1).tolist()


def _shared(prefix, ids):
    """How many leading tokens `prefix` and `ids` have in common."""
    count = 0
    for a, b in zip(prefix, ids):
        if a != b:
            break
        count += 1
    return count


def _token_weights(flags, starts, count):
    """Each token's weight: the flag of the text it ends in.

    `starts[j]` is the first token at or after the `j`-th boundary."""
    weights = [float(flags[0])] * count
    for boundary, start in zip(_boundaries(flags), starts):
        weights[start:] = [float(flags[boundary])] * (count - start)
    return weights


def _special_id(tokenizer, token, cache):
    if token not in cache:
        token_id = tokenizer.token_to_id(token)
        if token_id is None or tokenizer.id_to_token(token_id) != token:
            raise ValueError(
                f"The tokenizer has no token {token!r}, which the chat template needs. "
                "Choose the template of your model."
            )
        cache[token] = token_id
    return cache[token]
