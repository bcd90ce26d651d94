"""`gradient_checkpointing`: the same training in less memory (measured in benchmarks/memory.py)."""

import numpy as np
import pytest

import keras_mft
from tests.shared.models import small_causal_lm
from tests.shared.models import tiny_llama
from tests.shared.models import token_batch


def data(rows=8):
    x = token_batch(batch_size=rows, sequence_length=12)
    y = np.roll(x["token_ids"], -1, axis=1)
    weights = np.ones(y.shape, "float32")
    weights[:, :4] = 0.0  # a prompt without loss, as instruction data has
    return x, y, weights


def trained(model, **kwargs):
    # Rates for a few steps that change the masks (see the score budget).
    result = keras_mft.train(
        model, data(), epochs=2, batch_size=4, learning_rate=0.05, verbose=0, **kwargs
    )
    return result["step_losses"], keras_mft.masks_of(model)


def test_the_same_losses_and_masks_with_and_without_it():
    plain_losses, plain_masks = trained(keras_mft.wrap(tiny_llama(), layers="0:2", seed=0))
    model = keras_mft.wrap(tiny_llama(), layers="0:2", seed=0)
    start = keras_mft.masks_of(model)
    losses, masks = trained(model, gradient_checkpointing=True)
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)
    assert any(np.any(masks[path] != start[path]) for path in masks)  # training moved them
    for path in masks:
        np.testing.assert_array_equal(masks[path], plain_masks[path], err_msg=path)
    # The blocks are KerasHub's own again: the model saves as any other.
    assert type(model.backbone.transformer_layers[0]).__module__.startswith("keras_hub.")


@pytest.mark.parametrize("family", ["gemma3", "qwen3", "gpt2"])
def test_every_family_trains_with_it(family):
    model = keras_mft.wrap(small_causal_lm(family), layers="0:1", seed=0)
    with keras_mft.gradient_checkpointing(model):
        block = model.backbone.transformer_layers[0]
        assert type(block).__module__ == "keras_mft.training.checkpointing"
        assert type(block).__mro__[1].__module__.startswith("keras_hub.")  # a subclass
    losses, _ = trained(model, gradient_checkpointing=True)
    assert np.all(np.isfinite(losses))
