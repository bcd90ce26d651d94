"""Instruction data with the loss on the responses only, as in the MFT paper.

KerasHub's `CausalLMPreprocessor` puts the loss on every token. MFT, like the
supervised fine-tuning it continues, trains on prompt/response pairs with the
loss on the response tokens alone. `instruction_dataset` applies a chat
template, tokenizes, packs and returns `(x, y, sample_weight)` arrays for
`model.fit`, with `sample_weight` 1 on response tokens and 0 elsewhere.
"""

import json
import os
import warnings

import numpy as np

from keras_mft.chat_templates import check_template
from keras_mft.chat_templates import render


def read_jsonl(path):
    """Reads prompt/response records, one JSON object per line.

    Each line is `{"prompt": "...", "response": "..."}`, or
    `{"prompt": "...", "completion": "..."}` as TRL writes it (other fields
    are ignored); blank lines are skipped.

    Returns:
        `{"prompts": [...], "responses": [...]}`.
    """
    prompts, responses = [], []
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
            prompt, response = _fields(record, where)
            prompts.append(prompt)
            responses.append(response)
    if not prompts:
        raise ValueError(f"{path} holds no records.")
    return {"prompts": prompts, "responses": responses}


def _records(records):
    """`{"prompts", "responses"}` of an iterable of records (dicts), such as a
    `datasets.Dataset` or a list."""
    prompts, responses = [], []
    for number, record in enumerate(records):
        prompt, response = _fields(record, f"record {number}")
        prompts.append(prompt)
        responses.append(response)
    return {"prompts": prompts, "responses": responses}


def _fields(record, where):
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object with 'prompt' and 'response'.")
    # TRL's prompt-completion datasets name the response "completion".
    answer = "response" if "response" in record or "completion" not in record else "completion"
    missing = [key for key in ("prompt", answer) if key not in record]
    if missing:
        raise ValueError(
            f"{where} has no {' or '.join(repr(k) for k in missing)} field. "
            'Each line must look like {"prompt": "...", "response": "..."} '
            '(or "completion" instead of "response").'
        )
    prompt, response = record["prompt"], record[answer]
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"{where}: 'prompt' and 'response' must be strings.")
    for name, text in (("prompt", prompt), ("response", response)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{where}: the {name} holds {text[error.start]!r}, half of a surrogate "
                "pair, which is not text. Fix its \\u escape."
            ) from None
    if not response.strip():
        raise ValueError(
            f"{where} has an empty response: there is nothing to learn from it. "
            "Remove the line or fill in the response."
        )
    return prompt, response


def instruction_dataset(
    tokenizer,
    data,
    *,
    sequence_length,
    template="chatml",
    system=None,
    pack=True,
):
    """Tokenizes prompt/response pairs for training with a response-only loss.

    Args:
        tokenizer: the model's KerasHub tokenizer
            (`model.preprocessor.tokenizer`); it must know the template's
            special tokens.
        data: `{"prompts": [...], "responses": [...]}`; a path to a JSONL
            file of `{"prompt": ..., "response": ...}` records (or
            `"completion"` for `"response"`, as TRL names it); or an iterable
            of such records, e.g. a list of dicts or a `datasets.Dataset`.
        sequence_length: tokens per training sequence.
        template: `"chatml"` (SmolLM2), `"llama2"` or `"llama3"`.
        system: an optional system prompt, put in every example.
        pack: if True, examples are concatenated and cut into sequences of
            `sequence_length` tokens, so no compute is spent on padding; if
            False, each example is one sequence, truncated or padded.

    Returns:
        `(x, y, sample_weight)`: `x` is `{"token_ids", "padding_mask"}`, `y`
        the next token at each position, `sample_weight` 1.0 where that next
        token belongs to a response (its end-of-turn token included) and 0.0
        on prompt tokens and padding. Pass them to `model.fit(x, y,
        sample_weight=sample_weight)` of a `CausalLM` built with
        `preprocessor=None`, or called on token ids.
    """
    check_template(template)
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 2
    ):
        raise ValueError(f"`sequence_length` must be an int >= 2. Received: {sequence_length!r}")
    if isinstance(data, (str, os.PathLike)):
        data = read_jsonl(data)
    elif not isinstance(data, dict):
        data = _records(data)
    prompts, responses = data["prompts"], data["responses"]
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(
            f"Got {len(prompts)} prompts and {len(responses)} responses: give "
            "one response per prompt, and at least one."
        )
    examples = tokenize_examples(tokenizer, template, prompts, responses, system)
    window = sequence_length + 1
    _warn_about_lengths(examples, window, pack)
    if pack:
        ids = np.concatenate([ids for ids, _ in examples])
        weights = np.concatenate([weights for _, weights in examples])
        starts = range(0, max(len(ids) - 1, 1), sequence_length)
        rows = [(ids[s : s + window], weights[s : s + window]) for s in starts]
    else:
        rows = [(ids[:window], weights[:window]) for ids, weights in examples]

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


def _warn_about_lengths(examples, window, pack):
    """Says when examples do not fit a sequence, or when almost no token carries loss."""
    long = sum(len(ids) > window for ids, _ in examples)
    if long:
        what = (
            "packing must split them, so parts of their responses are learned without their prompts"
            if pack
            else "were cut at the end: their response tokens past it are lost"
        )
        warnings.warn(
            f"{long} of {len(examples)} examples are longer than sequence_length "
            f"({window - 1} tokens): {what}. Raise `sequence_length` or shorten them.",
            stacklevel=3,
        )
    # Packing keeps every token; without it, each example is cut at `window`.
    kept = [len(ids) if pack else min(len(ids), window) for ids, _ in examples]
    weighted = sum(float(np.sum(weights[:n])) for (_, weights), n in zip(examples, kept))
    total = sum(kept)
    if weighted < 0.01 * total:
        warnings.warn(
            f"Only {weighted:.0f} of {total} tokens ({weighted / total:.2%}) are response "
            "tokens that carry loss: training would spend almost all of its time on prompts.",
            stacklevel=3,
        )


def tokenize_examples(tokenizer, template, prompts, responses, system=None):
    """[(ids, weights)] per example: weights 1 on response tokens."""
    rendered = [render(template, p, r, system) for p, r in zip(prompts, responses)]
    texts = [text for pieces in rendered for text, special, _ in pieces if not special]
    tokenized = iter(tokenizer.tokenize(texts))
    special_ids = {}
    examples = []
    for pieces in rendered:
        ids, weights = [], []
        for text, special, is_response in pieces:
            if special:
                piece = [_special_id(tokenizer, text, template, special_ids)]
            else:
                piece = np.asarray(next(tokenized), "int32").reshape(-1).tolist()
            ids += piece
            weights += [float(is_response)] * len(piece)
        examples.append((np.array(ids, "int32"), np.array(weights, "float32")))
    return examples


def _special_id(tokenizer, token, template, cache):
    if token not in cache:
        token_id = tokenizer.token_to_id(token)
        if token_id is None or tokenizer.id_to_token(token_id) != token:
            raise ValueError(
                f"The tokenizer has no token {token!r}, which the {template!r} "
                "chat template needs. Choose the template of your model."
            )
        cache[token] = token_id
    return cache[token]
