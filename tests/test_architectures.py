"""wrap -> fit -> bake on a small random model of every supported KerasHub decoder."""

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking import architectures
from keras_mft.masking.layers import is_masked
from tests.shared.models import FAMILIES
from tests.shared.models import VOCABULARY_SIZE
from tests.shared.models import logits_of
from tests.shared.models import small_causal_lm
from tests.shared.models import to_numpy


def training_data(batch_size=4, sequence_length=8):
    rng = np.random.default_rng(1)
    token_ids = rng.integers(0, VOCABULARY_SIZE, (batch_size, sequence_length + 1))
    x = {
        "token_ids": token_ids[:, :-1],
        "padding_mask": np.ones((batch_size, sequence_length), bool),
    }
    return x, token_ids[:, 1:]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_wrap_fit_bake_keeps_the_logits(name):
    model = small_causal_lm(name)
    keras_mft.wrap(model, layers="all", sparsity=0.25, seed=0)
    aliases = list(architectures.layer_names_of(model.backbone))
    assert aliases == (
        ["q", "k", "v", "o", "up", "down"] if name == "gpt2" else list(architectures.ALIASES)
    )
    assert len(model.trainable_variables) == 2 * len(aliases)
    assert all(v.path.endswith("/scores") for v in model.trainable_variables)

    before = keras_mft.masks_of(model)
    # A large learning rate, so that a few steps visibly change the masks.
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    x, y = training_data()
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = keras_mft.masks_of(model)
    assert any(np.any(before[path] != after[path]) for path in before)
    for path, mask in after.items():
        assert np.sum(~mask) == int(0.25 * mask.size), path

    expected = logits_of(model, x)
    keras_mft.bake(model)
    assert not any(is_masked(layer) for layer in model._flatten_layers())
    np.testing.assert_array_equal(logits_of(model, x), expected)
    for variable in model.weights:
        if variable.path in after:
            assert np.all(to_numpy(variable)[~after[variable.path]] == 0), variable.path


# The attribute each family's block keeps its MLP projections in: gate is the
# one its call() passes through the activation, up the one multiplied in.
MLP_ATTRIBUTES = {
    "llama": (
        "_feedforward_gate_dense",
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
    ),
    "mistral": (
        "_feedforward_gate_dense",
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
    ),
    "qwen": (
        "_feedforward_gate_dense",
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
    ),
    "qwen3": (
        "_feedforward_gate_dense",
        "_feedforward_intermediate_dense",
        "_feedforward_output_dense",
    ),
    "phi3": (
        "feedforward_gate_dense",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ),
    "gemma": ("gating_ffw", "gating_ffw_2", "ffw_linear"),
    "gemma3": ("gating_ffw", "gating_ffw_2", "ffw_linear"),
    "gpt2": (None, "_feedforward_intermediate_dense", "_feedforward_output_dense"),
}


@pytest.mark.parametrize("name", list(MLP_ATTRIBUTES))
def test_aliases_name_the_right_layers(name):
    backbone = small_causal_lm(name).backbone
    block = backbone.transformer_layers[0]
    projections = architectures.projections_of(backbone, block)
    for alias, attribute in zip(("gate", "up", "down"), MLP_ATTRIBUTES[name]):
        if attribute is None:
            assert alias not in projections
        else:
            assert projections[alias] is getattr(block, attribute), alias
    assert [projections[a].name for a in ("q", "k", "v", "o")] == [
        "query",
        "key",
        "value",
        "attention_output",
    ]


@pytest.mark.parametrize("name", ["gemma", "gpt2"])
def test_targets_take_aliases_or_the_models_layer_names(name):
    model = small_causal_lm(name)
    names = architectures.layer_names_of(model.backbone)
    keras_mft.wrap(model, layers=[1], targets=["q", names["down"]], seed=0)
    assert sorted(v.path.split("/")[-2] for v in model.trainable_variables) == sorted(
        ["query", names["down"]]
    )


def test_mask_change_plot_reads_gemma_block_names(tmp_path):
    model = small_causal_lm("gemma")  # blocks are named decoder_block_N
    keras_mft.wrap(model, layers=[1], seed=0)
    masks = keras_mft.masks_of(model)
    keras_mft.plot.mask_change(masks, masks, tmp_path / "change.png")
    assert (tmp_path / "change.png").stat().st_size > 1000


def test_gpt2_has_no_gate():
    model = small_causal_lm("gpt2")
    with pytest.raises(ValueError, match=r"Unknown targets \['gate'\].*'up', 'down'"):
        keras_mft.wrap(model, targets=["gate"])
