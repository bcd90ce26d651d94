"""Chat templates: how a prompt and its response become one token sequence.

A template is text in which the model's special tokens appear by name. It is
split on those names *before* the user's text is put in, so a prompt that
happens to contain `<|im_end|>` stays plain text and never ends a turn.
`{system}` marks where the system turn goes when a system prompt is given.
"""

import re

TEMPLATES = {
    # SmolLM2, Qwen and other ChatML models.
    "chatml": {
        "specials": ("<|im_start|>", "<|im_end|>"),
        "system": "<|im_start|>system\n{system}<|im_end|>\n",
        "prompt": "{system}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
        "response": "{response}<|im_end|>",
    },
    "llama2": {
        "specials": ("<s>", "</s>"),
        "system": "<<SYS>>\n{system}\n<</SYS>>\n\n",
        "prompt": "<s>[INST] {system}{prompt} [/INST]",
        "response": " {response} </s>",
    },
    "llama3": {
        "specials": (
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        "prompt": "<|begin_of_text|>{system}<|start_header_id|>user"
        "<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant"
        "<|end_header_id|>\n\n",
        "response": "{response}<|eot_id|>",
    },
}


def check_template(name):
    if name not in TEMPLATES:
        raise ValueError(
            f"Unknown chat template {name!r}. Choose one of {sorted(TEMPLATES)}: "
            "'chatml' for SmolLM2, 'llama2' for Llama-2 chat models, 'llama3' "
            "for Llama-3 instruct models."
        )


def render(name, prompt, response, system=None):
    """The pieces of one example, in order.

    Returns:
        A list of `(text, is_special, is_response)`: special pieces are token
        names to look up, the others plain text to tokenize. The response
        pieces, its end-of-turn token included, carry the loss.
    """
    check_template(name)
    template = TEMPLATES[name]
    values = {"prompt": prompt, "response": response, "system": system}
    pieces = []
    for part, is_response in ((template["prompt"], False), (template["response"], True)):
        for text, is_special in _split(part, template["specials"], values):
            if text != "{system}":
                pieces.append((text, is_special, is_response))
            elif system:
                system_turn = template["system"].replace("{system}", "{text}")
                pieces += [
                    (t, s, False)
                    for t, s in _split(system_turn, template["specials"], {"text": system})
                ]
    return pieces


def _split(template, specials, values):
    """Splits on specials and `{system}`, then fills in `values`."""
    names = (*specials, "{system}")
    pattern = "(" + "|".join(re.escape(n) for n in names) + ")"
    for part in re.split(pattern, template):
        if part in names:
            yield part, part in specials
        elif part:
            yield part.format(**values), False


def template_for(tokenizer):
    """The first template whose special tokens `tokenizer` knows, or an error."""
    vocabulary = set(tokenizer.get_vocabulary())
    for name in ("chatml", "llama3", "llama2"):
        if all(token in vocabulary for token in TEMPLATES[name]["specials"]):
            return name
    raise ValueError(
        "The tokenizer knows the special tokens of none of the chat templates "
        f"{sorted(TEMPLATES)}. keras-mft needs one to mark where responses start."
    )
