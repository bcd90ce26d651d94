"""Which KerasHub models keras-mft can wrap, and where their projections are.

Every supported decoder block has attention projections and MLP projections
built from `Dense`/`EinsumDense` layers. keras-mft names them by the same
short aliases whatever the model, and accepts each model's own KerasHub layer
names as well:

| alias  | Llama, Mistral, Qwen, Phi3       | Gemma, Gemma3  | GPT-2                            | group     |
|--------|----------------------------------|----------------|----------------------------------|-----------|
| `q`    | `query`                          | `query`        | `query`                          | attention |
| `k`    | `key`                            | `key`          | `key`                            | attention |
| `v`    | `value`                          | `value`        | `value`                          | attention |
| `o`    | `attention_output`               | `attention_output` | `attention_output`           | attention |
| `gate` | `feedforward_gate_dense`         | `ffw_gating`   | (none: GPT-2's MLP has no gate)  | mlp       |
| `up`   | `feedforward_intermediate_dense` | `ffw_gating_2` | `feedforward_intermediate_dense` | mlp       |
| `down` | `feedforward_output_dense`       | `ffw_linear`   | `feedforward_output_dense`       | mlp       |

The Hugging Face names of the same projections (`q_proj`, `k_proj`, `v_proj`,
`o_proj`, `gate_proj`, `up_proj`, `down_proj`), which PEFT's `target_modules`
uses, are accepted for every model that has the projection.
"""

import keras_hub

# Every alias and its group, in the order the paper lists the projections.
GROUP_OF = {
    "q": "attention",
    "k": "attention",
    "v": "attention",
    "o": "attention",
    "gate": "mlp",
    "up": "mlp",
    "down": "mlp",
}
ALIASES = tuple(GROUP_OF)

# The Hugging Face names (PEFT's `target_modules`), accepted wherever an alias is.
HF_NAMES = {f"{alias}_proj": alias for alias in ALIASES}

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "attention_output"}
_GATED_MLP = {
    "gate": "feedforward_gate_dense",
    "up": "feedforward_intermediate_dense",
    "down": "feedforward_output_dense",
}
_GEMMA_MLP = {"gate": "ffw_gating", "up": "ffw_gating_2", "down": "ffw_linear"}
_PLAIN_MLP = {"up": "feedforward_intermediate_dense", "down": "feedforward_output_dense"}
_LLAMA = {**_ATTENTION, **_GATED_MLP}
_GEMMA = {**_ATTENTION, **_GEMMA_MLP}

# Backbone class -> {alias: KerasHub layer name}. Subclasses (Llama3Backbone
# of LlamaBackbone) are found through their parent.
LAYER_NAMES = {
    keras_hub.models.LlamaBackbone: _LLAMA,
    keras_hub.models.MistralBackbone: _LLAMA,
    keras_hub.models.QwenBackbone: _LLAMA,
    keras_hub.models.Qwen3Backbone: _LLAMA,
    keras_hub.models.Phi3Backbone: _LLAMA,
    keras_hub.models.GemmaBackbone: _GEMMA,
    keras_hub.models.Gemma3Backbone: _GEMMA,
    keras_hub.models.GPT2Backbone: {**_ATTENTION, **_PLAIN_MLP},
}


# Every name a target may have in some supported model.
KNOWN_NAMES = {*ALIASES, *HF_NAMES, *(n for names in LAYER_NAMES.values() for n in names.values())}


def supported_models():
    """The names of the backbones keras-mft can wrap (and their `CausalLM`s)."""
    return [cls.__name__ for cls in LAYER_NAMES]


def backbone_of(model):
    """The backbone of `model`, or a TypeError naming what is supported."""
    backbone = model.backbone if isinstance(model, keras_hub.models.CausalLM) else model
    if isinstance(backbone, tuple(LAYER_NAMES)):
        return backbone
    raise TypeError(
        f"keras-mft cannot wrap a {type(model).__name__}. Supported: the "
        f"causal LMs and backbones of {', '.join(supported_models())} "
        "(and their subclasses, such as Llama3Backbone). Load one with e.g. "
        "`keras_hub.models.Llama3CausalLM.from_preset(...)`."
    )


def layer_names_of(backbone):
    """{alias: KerasHub layer name} of the projections of `backbone`'s blocks."""
    for cls in type(backbone).__mro__:
        if cls in LAYER_NAMES:
            return LAYER_NAMES[cls]
    backbone_of(backbone)  # raises the error that lists what is supported


def projections_of(backbone, block):
    """The projections of one decoder block of `backbone`, as {alias: layer}."""
    by_name = {layer.name: layer for layer in block._flatten_layers(include_self=False)}
    return {alias: by_name[name] for alias, name in layer_names_of(backbone).items()}


def kernel_of(layer):
    """The stored kernel variable of a `Dense` / `EinsumDense` (Keras names it `kernel`)."""
    return next(variable for variable in layer.weights if variable.name == "kernel")


def alias_of_layer_name(name):
    """The alias of a KerasHub projection layer name, in any supported model."""
    for names in LAYER_NAMES.values():
        for alias, layer_name in names.items():
            if layer_name == name:
                return alias
    raise KeyError(f"{name!r} is not a projection keras-mft masks.")
