"""MFT together with KerasHub LoRA on the same blocks, and int8 models refused."""

import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking.layers import mask_layer
from tests.shared.models import fit_a_little
from tests.shared.models import gradient
from tests.shared.models import logits_of
from tests.shared.models import masked
from tests.shared.models import small_causal_lm
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy
from tests.shared.models import token_batch
from tests.shared.references import numpy_keep_mask


def lora_dense(rank=2, alpha=4, seed=0):
    """A Dense with LoRA enabled and non-zero random factors, then masked."""
    layer = keras.layers.Dense(6)
    layer.build((None, 10))
    layer.enable_lora(rank, lora_alpha=alpha)
    mask_layer(layer, 0.3)
    rng = np.random.default_rng(seed)
    for variable in (layer.frozen_kernel, layer.lora_kernel_a, layer.lora_kernel_b):
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    layer.scores.assign(0.02 * rng.standard_normal((10, 6)).astype("float32"))
    return layer


def test_kernel_is_masked_kernel_plus_lora_delta():
    layer = lora_dense()
    kernel, scores = to_numpy(layer.frozen_kernel), to_numpy(layer.scores)
    a, b = to_numpy(layer.lora_kernel_a), to_numpy(layer.lora_kernel_b)
    expected = kernel * numpy_keep_mask(scores, layer.num_removed) + (4 / 2) * a @ b
    np.testing.assert_allclose(to_numpy(layer.kernel), expected, rtol=1e-5, atol=1e-5)
    assert sorted(v.name for v in layer.trainable_variables) == [
        "lora_kernel_a",
        "lora_kernel_b",
        "scores",
    ]


def test_gradients_of_scores_and_lora_factors_match_numpy():
    layer = lora_dense(seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 10)).astype("float32")
    upstream = rng.standard_normal((3, 6)).astype("float32")
    grad_effective = x.T @ upstream  # dL/dW_eff

    def loss():
        return keras.ops.sum(keras.ops.multiply(layer(x), upstream))

    kernel, scores = to_numpy(layer.frozen_kernel), to_numpy(layer.scores)
    a, b = to_numpy(layer.lora_kernel_a), to_numpy(layer.lora_kernel_b)
    np.testing.assert_allclose(
        to_numpy(gradient(loss, layer.scores)),
        np.sign(scores) * kernel * grad_effective,
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        to_numpy(gradient(loss, layer.lora_kernel_a)),
        2.0 * grad_effective @ b.T,
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        to_numpy(gradient(loss, layer.lora_kernel_b)),
        2.0 * a.T @ grad_effective,
        rtol=1e-4,
        atol=1e-4,
    )


def test_wrap_a_lora_model_fit_save_and_bake(tmp_path):
    model = tiny_llama()
    model.backbone.enable_lora(2, target_layer_names=["query", "value"])
    keras_mft.wrap(model, layers="0:2", seed=0)
    trainable = sorted(v.path for v in model.trainable_variables)
    assert len(trainable) == 2 * 7 + 3 * 2 * 2  # scores of 2 blocks; LoRA of 3 blocks
    assert all(p.endswith(("/scores", "/lora_kernel_a", "/lora_kernel_b")) for p in trainable)
    query = model.backbone.transformer_layers[0]._self_attention_layer._query_dense

    batch = token_batch(batch_size=4)
    masks_before, masks_after = fit_a_little(model, batch)
    assert any(np.any(masks_before[p] != masks_after[p]) for p in masks_before)
    assert np.any(to_numpy(query.lora_kernel_b) != 0)  # LoRA trained (B starts at zero)

    model.save_weights(tmp_path / "state.weights.h5")
    fresh = tiny_llama()
    fresh.backbone.enable_lora(2, target_layer_names=["query", "value"])
    keras_mft.wrap(fresh, layers="0:2", seed=1)
    fresh.load_weights(tmp_path / "state.weights.h5")
    expected = logits_of(model, batch)
    np.testing.assert_array_equal(logits_of(fresh, batch), expected)

    keras_mft.bake(model)
    np.testing.assert_allclose(logits_of(model, batch), expected, rtol=1e-6, atol=1e-6)
    assert sorted(v.path for v in model.trainable_variables) == sorted(
        p for p in trainable if not p.endswith("/scores")
    )
    model.backbone.save_lora_weights(str(tmp_path / "adapter.lora.h5"))


def test_a_masked_layer_refuses_lora_afterwards():
    model = keras_mft.wrap(tiny_llama(), layers=[1], seed=0)
    # KerasHub enables LoRA on block 0 before block 1's masked layer refuses,
    # so the error says to reload the model.
    with pytest.raises(
        NotImplementedError,
        match=r"enable LoRA first .*then call `keras_mft.wrap.*reload the model",
    ):
        model.backbone.enable_lora(2)


def test_int8_models_are_refused_before_any_change(fast_quantize):
    model = tiny_llama()
    keras_mft.wrap(model, layers="1:2", seed=0)
    for quantizing in (model, model.backbone, masked(model)[0]):
        with pytest.raises(
            ValueError, match=r"holds masks and cannot be quantized\. Call `keras_mft\.bake"
        ):
            quantizing.quantize("int8")
    # Refused before any layer changed, the unmasked blocks and embedding too.
    assert not any(getattr(layer, "quantization_mode", None) for layer in model._flatten_layers())
    keras_mft.bake(model)
    model.quantize("int8")  # a baked model is a plain one
    assert (
        model.backbone.transformer_layers[1]._self_attention_layer._query_dense.quantization_mode
        == "int8"
    )
    with pytest.raises(
        ValueError, match=r"is quantized \(int8\)\. Wrap the float model, then bake and quantize"
    ):
        keras_mft.wrap(model)
    assert not any(v.path.endswith("/scores") for v in model.weights)


def test_lora_layers_with_biases_keep_keras_hubs_trainable_flags():
    """Qwen's query/value have biases: frozen while wrapped, trainable after bake as in KerasHub."""
    model = small_causal_lm("qwen")
    model.backbone.enable_lora(2)  # query and value
    expected_after_bake = sorted(v.path for v in model.trainable_variables)
    assert any(p.endswith("query/bias") for p in expected_after_bake)
    keras_mft.wrap(model, layers=[0], targets=["q", "down"], seed=0)
    names = {v.path.split("/")[-1] for v in model.trainable_variables}
    assert names == {"scores", "lora_kernel_a", "lora_kernel_b"}
    keras_mft.bake(model)
    assert sorted(v.path for v in model.trainable_variables) == expected_after_bake
