"""keras_mft.bake: a plain KerasHub model again."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking.layers import is_masked
from tests.shared.models import logits_of
from tests.shared.models import to_numpy

LOAD_WITH_KERAS_HUB_ONLY = """
import sys
import keras
import keras_hub
import numpy as np

preset, batch_file, logits_file = sys.argv[1:]
model = keras_hub.models.CausalLM.from_preset(preset)
batch = dict(np.load(batch_file))
np.save(logits_file, keras.ops.convert_to_numpy(model(batch)))
assert "keras_mft" not in sys.modules
"""


def wrapped(model):
    keras_mft.wrap(model, layers="all", sparsity=0.2, seed=0)
    return model


def test_bake_keeps_the_logits_and_restores_plain_layers(model, batch):
    wrapped(model)
    masks = {
        layer.kernel_path: (to_numpy(layer.frozen_kernel), to_numpy(layer.hard_mask()))
        for layer in model._flatten_layers()
        if is_masked(layer)
    }
    expected = logits_of(model, batch)
    assert keras_mft.bake(model) is model
    np.testing.assert_allclose(logits_of(model, batch), expected, rtol=1e-6, atol=1e-6)
    assert not any(is_masked(layer) for layer in model._flatten_layers())
    assert not any(v.path.endswith("scores") for v in model.weights)
    assert len(model.trainable_variables) == len(model.weights)
    for variable in model.weights:
        if variable.path in masks:
            kernel, mask = masks.pop(variable.path)
            np.testing.assert_array_equal(to_numpy(variable), kernel * mask)
            assert int(np.sum(to_numpy(variable) == 0)) >= int(np.sum(mask == 0))
    assert not masks
    for layer in model._flatten_layers():
        if layer.name in ("query", "feedforward_gate_dense"):
            assert type(layer) in (keras.layers.EinsumDense, keras.layers.Dense)


def test_bake_refuses_an_unwrapped_model(model):
    with pytest.raises(ValueError, match="call `keras_mft.wrap"):
        keras_mft.bake(model)


def test_baked_model_trains_like_a_keras_hub_model(model, batch):
    keras_mft.bake(wrapped(model))
    labels = np.roll(batch["token_ids"], -1, axis=1)
    history = model.fit(batch, labels, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_wrapped_saves_weights_only_and_baked_saves_as_keras_does(model, batch, tmp_path):
    expected = logits_of(wrapped(model), batch)
    (tmp_path / "model.keras").write_bytes(b"saved before")
    for save in (
        lambda: model.save(tmp_path / "model.keras"),
        lambda: model.save_to_preset(tmp_path / "preset"),
        lambda: model.backbone.save_to_preset(tmp_path / "preset"),
    ):
        with pytest.raises(ValueError, match="would not load back.*save_masks.*save_weights.*bake"):
            save()
    assert (tmp_path / "model.keras").read_bytes() == b"saved before"
    assert not (tmp_path / "preset" / "config.json").exists()
    model.save_weights(tmp_path / "wrapped.weights.h5")  # the whole training state
    keras_mft.bake(model).save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(logits_of(loaded, batch), expected, rtol=1e-6, atol=1e-6)


def test_baked_preset_loads_with_keras_hub_alone(model, batch, tmp_path):
    expected = logits_of(wrapped(model), batch)
    keras_mft.bake(model).save_to_preset(tmp_path / "preset")
    np.savez(tmp_path / "batch.npz", **batch)
    subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_WITH_KERAS_HUB_ONLY,
            str(tmp_path / "preset"),
            str(tmp_path / "batch.npz"),
            str(tmp_path / "logits.npy"),
        ],
        check=True,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
    )
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-6, atol=1e-6)
