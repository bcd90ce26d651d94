"""A baked model exports to Hugging Face format with KerasHub's exporter and loads back."""

import keras
import keras_hub
import numpy as np
import pytest

import keras_mft
from tests.shared.models import logits_of
from tests.shared.models import to_numpy
from tests.shared.models import token_batch


@pytest.mark.parametrize("tied", [False, True])  # SmolLM2 ties its embeddings
def test_baked_llama3_round_trips_through_hugging_face_format(tied, tmp_path):
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=64,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        tie_word_embeddings=tied,
    )
    rng = np.random.default_rng(0)
    backbone.set_weights([0.2 * rng.standard_normal(w.shape) for w in backbone.get_weights()])
    model = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    keras_mft.wrap(model, layers="all", sparsity=0.2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    batch = token_batch(batch_size=4)
    model.fit(batch, batch["token_ids"], batch_size=2, epochs=1, verbose=0)
    masks = keras_mft.masks_of(model)
    keras_mft.bake(model)
    expected = logits_of(model, batch)

    model.export_to_transformers(str(tmp_path / "hf"))
    loaded = keras_hub.models.Llama3Backbone.from_preset(str(tmp_path / "hf"))
    reloaded = keras_hub.models.Llama3CausalLM(backbone=loaded, preprocessor=None)
    np.testing.assert_array_equal(logits_of(reloaded, batch), expected)
    for variable in loaded.weights:
        if variable.path in masks:  # the removed weights are zeros in the checkpoint
            assert np.all(to_numpy(variable)[~masks[variable.path]] == 0), variable.path
    assert sum(variable.path in masks for variable in loaded.weights) == 14
