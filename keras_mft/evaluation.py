"""Held-out loss on responses, greedy exact-match, and a results table."""

import json
import math
import re

import keras
import keras_hub
import numpy as np

from keras_mft.data.chat_templates import resolve_template
from keras_mft.data.instruction_data import tokenize_conversations

_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def response_loss(model, data, batch_size=8, verbose=False):
    """Mean cross-entropy over response tokens, its perplexity and accuracy.

    Unlike `model.evaluate`, which divides the weighted sum by every position
    of the batch, this is the mean over the tokens with weight 1.

    Args:
        model: a `CausalLM`.
        data: `(x, y, sample_weight)` from `instruction_dataset`.
        batch_size: sequences per forward pass.
        verbose: show a progress bar.

    Returns:
        `{"loss": ..., "perplexity": ..., "accuracy": ..., "tokens": ...}`,
        where `accuracy` is the share of response tokens that the model
        predicts exactly (teacher-forced argmax).
    """
    x, y, weights = data
    total, correct, count = 0.0, 0.0, 0.0
    progress = keras.utils.Progbar(len(y), unit_name="sequence") if verbose else None
    for start in range(0, len(y), batch_size):
        rows = slice(start, start + batch_size)
        logits = model({key: value[rows] for key, value in x.items()})
        logits = keras.ops.cast(logits, "float32")
        losses = keras.losses.sparse_categorical_crossentropy(y[rows], logits, from_logits=True)
        predicted = keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))
        total += float(np.sum(keras.ops.convert_to_numpy(losses) * weights[rows]))
        correct += float(np.sum((predicted == y[rows]) * weights[rows]))
        count += float(np.sum(weights[rows]))
        if progress is not None:
            progress.add(len(y[rows]))
    if count == 0:
        raise ValueError("The data has no response tokens to evaluate.")
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "accuracy": correct / count,
        "tokens": int(count),
    }


def per_example_metrics(model, data, batch_size=8):
    """The response loss and token accuracy of each example, each on its own.

    For paired comparisons between models (which examples one model answers
    better than another) each example must be scored alone: build `data`
    with `instruction_dataset(..., pack=False)` and a `sequence_length` that
    holds the longest example. Rows run in order of length, each batch cut to
    its longest row (rounded up to 32 tokens), so padding costs little.

    Returns:
        `{"loss": ..., "accuracy": ..., "tokens": ...}`, numpy arrays with one
        entry per row of `data`, in its order: the mean cross-entropy over the
        example's response tokens, the share of them predicted exactly
        (teacher forced), and how many there are.
    """
    x, y, weights = data
    lengths = np.sum(x["padding_mask"], axis=1)
    if np.any(np.sum(weights, axis=1) == 0):
        raise ValueError("Some examples have no response tokens: score them with their responses.")
    losses = np.zeros(len(y))
    hits = np.zeros(len(y))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = min(int(-(-lengths[rows].max() // 32) * 32), y.shape[1])
        logits = model({key: value[rows, :width] for key, value in x.items()})
        logits = keras.ops.cast(logits, "float32")
        token_losses = keras.losses.sparse_categorical_crossentropy(
            y[rows, :width], logits, from_logits=True
        )
        predicted = keras.ops.convert_to_numpy(keras.ops.argmax(logits, axis=-1))
        row_weights = weights[rows, :width]
        losses[rows] = np.sum(keras.ops.convert_to_numpy(token_losses) * row_weights, axis=1)
        hits[rows] = np.sum((predicted == y[rows, :width]) * row_weights, axis=1)
    tokens = np.sum(weights, axis=1)
    return {"loss": losses / tokens, "accuracy": hits / tokens, "tokens": tokens.astype("int64")}


def final_answer(text):
    """The number after `####` (GSM8K style), without commas, or None."""
    match = _ANSWER.search(text)
    if match is None:
        return None
    number = match.group(1).replace(",", "")
    return number[:-2] if number.endswith(".0") else number


def greedy_generate(
    model,
    tokenizer,
    prompts,
    *,
    template=None,
    chat_template=None,
    end_token=None,
    system=None,
    max_new_tokens=128,
    batch_size=8,
):
    """Greedy answers to user messages, as text.

    Each prompt is one user turn in the chat template that
    `instruction_dataset` would choose (`template`, `chat_template`, else the
    tokenizer's own), followed by the template's start of an answer. An
    answer ends at the template's end-of-turn token (or `end_token`) or
    after `max_new_tokens` (`greedy_ids`).
    """
    source = resolve_template(tokenizer, template, chat_template)
    prompt_ids, end_id = _prompt_ids(tokenizer, source, prompts, system)
    if end_token is not None:
        end_id = tokenizer.token_to_id(end_token)
    outputs = greedy_ids(model, prompt_ids, max_new_tokens, [end_id], batch_size)
    return [_detokenize(tokenizer, ids) for ids in outputs]


def greedy_ids(model, prompt_ids, max_new_tokens, stop_ids, batch_size=8):
    """The greedy continuation of each prompt, as token ids, up to a stop id.

    Prompts run in batches, right-padded to the batch's longest, through
    KerasHub's cached `generate`. The model's own sampler is left untouched:
    a greedy sampler is used for these calls only.
    """
    sampler, function = model.sampler, model.generate_function
    model.sampler, model.generate_function = keras_hub.samplers.GreedySampler(), None
    try:
        generate = model.make_generate_function()
        outputs = []
        for start in range(0, len(prompt_ids), batch_size):
            batch = prompt_ids[start : start + batch_size]
            longest = max(len(ids) for ids in batch)
            token_ids = np.zeros((len(batch), longest + max_new_tokens), "int32")
            padding_mask = np.zeros(token_ids.shape, bool)
            for row, ids in enumerate(batch):
                token_ids[row, : len(ids)] = ids
                padding_mask[row, : len(ids)] = True
            output = generate(
                {"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=stop_ids
            )
            output_ids = keras.ops.convert_to_numpy(output["token_ids"])
            for row, ids in enumerate(batch):
                new = output_ids[row, len(ids) : len(ids) + max_new_tokens].tolist()
                stops = [i for i, token in enumerate(new) if token in stop_ids]
                outputs.append(new[: stops[0]] if stops else new)
        return outputs
    finally:
        model.sampler, model.generate_function = sampler, function


def exact_match(model, tokenizer, prompts, answers, **generate_kwargs):
    """The share of prompts whose greedy answer after `####` is right.

    Args:
        answers: reference texts ending in `#### N`, or the numbers N.
        **generate_kwargs: passed to `greedy_generate` (`template`,
            `end_token`, `max_new_tokens`, ...).

    Returns:
        `{"exact_match": ..., "correct": ..., "total": ...}`.
    """
    outputs = greedy_generate(model, tokenizer, prompts, **generate_kwargs)
    return score_answers(outputs, answers)


def score_answers(outputs, answers):
    """Compares the `####` answers of `outputs` with `answers`."""
    correct = 0
    for output, answer in zip(outputs, answers, strict=True):
        expected = final_answer(str(answer)) or str(answer).strip()
        correct += final_answer(output) == expected
    return {"exact_match": correct / len(outputs), "correct": correct, "total": len(outputs)}


def results_table(results):
    """A markdown table of `{arm: {metric: value}}`, metrics as columns."""
    metrics = sorted({name for row in results.values() for name in row})
    lines = [
        "| arm | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for arm, row in results.items():
        cells = [_format(row.get(name)) for name in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_results(results, path):
    """Writes `{arm: {metric: value}}` as JSON."""
    with open(path, "w") as file:
        json.dump(results, file, indent=2, sort_keys=True)


def _format(value):
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _prompt_ids(tokenizer, source, prompts, system):
    """The token ids of each prompt up to where its answer starts, and the
    id that ends an answer, read from the prompts rendered with a stand-in answer."""
    conversations = [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": "."}]
        for prompt in prompts
    ]
    if system:
        conversations = [[{"role": "system", "content": system}, *turns] for turns in conversations]
    examples = tokenize_conversations(tokenizer, conversations, source)
    prompt_ids = [ids[: int(np.argmax(weights > 0))].tolist() for ids, weights in examples]
    ids, weights = examples[0]
    return prompt_ids, int(ids[np.flatnonzero(weights)[-1]])


def _detokenize(tokenizer, ids):
    text = tokenizer.detokenize(np.asarray(ids, "int32"))
    if isinstance(text, str):
        return text
    text = keras.ops.convert_to_numpy(text) if not isinstance(text, bytes) else text
    return text.item().decode("utf-8") if hasattr(text, "item") else text.decode("utf-8")
