"""Which KerasHub models keras-mft can wrap, and where their projections are.

A decoder block of KerasHub's Llama has seven projections. keras-mft names
each by its KerasHub layer name or by a short alias:

| alias  | KerasHub layer name              | group     |
|--------|----------------------------------|-----------|
| `q`    | `query`                          | attention |
| `k`    | `key`                            | attention |
| `v`    | `value`                          | attention |
| `o`    | `attention_output`               | attention |
| `gate` | `feedforward_gate_dense`         | mlp       |
| `up`   | `feedforward_intermediate_dense` | mlp       |
| `down` | `feedforward_output_dense`       | mlp       |
"""

import keras_hub

# alias -> (KerasHub layer name, group), in the order the paper lists them.
PROJECTIONS = {
    "q": ("query", "attention"),
    "k": ("key", "attention"),
    "v": ("value", "attention"),
    "o": ("attention_output", "attention"),
    "gate": ("feedforward_gate_dense", "mlp"),
    "up": ("feedforward_intermediate_dense", "mlp"),
    "down": ("feedforward_output_dense", "mlp"),
}

SUPPORTED_MODELS = (
    "keras_hub.models.LlamaCausalLM",
    "keras_hub.models.Llama3CausalLM",
    "keras_hub.models.LlamaBackbone",
    "keras_hub.models.Llama3Backbone",
)


def backbone_of(model):
    """The Llama backbone of `model`, or a TypeError naming what is supported."""
    if isinstance(model, keras_hub.models.LlamaCausalLM):
        return model.backbone
    if isinstance(model, keras_hub.models.LlamaBackbone):
        return model
    raise TypeError(
        f"keras-mft cannot wrap a {type(model).__name__}. Supported models: "
        f"{', '.join(SUPPORTED_MODELS)} (Llama3 classes subclass the Llama "
        "ones). Load one with e.g. "
        "`keras_hub.models.Llama3CausalLM.from_preset(...)`."
    )


def projections_of(block):
    """The projections of one decoder block, as {alias: layer}."""
    by_name = {
        layer.name: layer for layer in block._flatten_layers(include_self=False)
    }
    return {alias: by_name[name] for alias, (name, _) in PROJECTIONS.items()}


def group_of(alias):
    """'attention' or 'mlp'."""
    return PROJECTIONS[alias][1]
