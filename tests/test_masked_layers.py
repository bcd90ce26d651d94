"""MaskedDense and MaskedEinsumDense on their own."""

import h5py
import keras
import numpy as np
import pytest

import keras_mft
from keras_mft.masking import backends
from keras_mft.masking.mask import num_removed
from tests.shared.models import gradient
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy
from tests.shared.references import numpy_keep_mask
from tests.shared.references import numpy_threshold


def dense(sparsity=0.25, **kwargs):
    layer = keras_mft.MaskedDense(6, sparsity=sparsity, **kwargs)
    layer.build((None, 10))
    return layer


def einsum_dense(sparsity=0.25, **kwargs):
    layer = keras_mft.MaskedEinsumDense("bqm,muh->bquh", (None, 3, 4), sparsity=sparsity, **kwargs)
    layer.build((None, None, 10))
    return layer


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if variable.name in ("num_removed", "last_threshold"):
            continue
        scale = 0.02 if variable.name == "scores" else 1.0
        variable.assign(scale * rng.standard_normal(variable.shape))


def test_only_the_scores_are_trainable():
    layer = dense(use_bias=True)
    assert [v.name for v in layer.trainable_variables] == ["scores"]
    assert sorted(v.name for v in layer.non_trainable_variables) == [
        "bias",
        "kernel",
        "last_threshold",
        "num_removed",
    ]
    assert layer.scores.dtype == "float32"
    assert layer.scores.path.endswith("scores")


@pytest.mark.parametrize("make", [dense, einsum_dense])
def test_forward_is_kernel_times_mask(make):
    layer = make()
    randomize(layer)
    x = (
        np.random.default_rng(1)
        .standard_normal((2, 10) if make is dense else (2, 5, 10))
        .astype("float32")
    )
    kernel, scores = to_numpy(layer.frozen_kernel), to_numpy(layer.scores)
    effective = kernel * numpy_keep_mask(scores, layer.num_removed)
    equation = "bm,mn->bn" if make is dense else "bqm,muh->bquh"
    expected = np.einsum(equation, x, effective)
    if layer.bias is not None:
        expected = expected + to_numpy(layer.bias)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    assert layer.num_removed == num_removed(kernel.size, 0.25)
    assert int(np.sum(to_numpy(layer.hard_mask()) == 0)) == layer.num_removed
    assert keras.backend.standardize_dtype(layer.hard_mask().dtype) == "float32"


@pytest.mark.parametrize("make", [dense, einsum_dense])
def test_score_gradient_matches_numpy(make):
    """dL/ds = sign(s) * W * dL/dW_eff, with dL/dW_eff computed in numpy."""
    layer = make(sparsity=0.4)
    randomize(layer, seed=2)
    rng = np.random.default_rng(3)
    if make is dense:
        x = rng.standard_normal((3, 10)).astype("float32")
        upstream = rng.standard_normal((3, 6)).astype("float32")
        grad_effective = np.einsum("bm,bn->mn", x, upstream)
    else:
        x = rng.standard_normal((2, 5, 10)).astype("float32")
        upstream = rng.standard_normal((2, 5, 3, 4)).astype("float32")
        grad_effective = np.einsum("bqm,bquh->muh", x, upstream)

    def loss():
        return keras.ops.sum(keras.ops.multiply(layer(x), upstream))

    scores, kernel = to_numpy(layer.scores), to_numpy(layer.frozen_kernel)
    expected = np.sign(scores) * kernel * grad_effective
    actual = to_numpy(gradient(loss, layer.scores))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_trains_and_predicts_exactly_when_compiled_with_jit_compile():
    """`jit_compile=True`: XLA on JAX and TensorFlow (Keras' choice on a machine
    with an accelerator), `torch.compile` on PyTorch."""
    layer = keras_mft.MaskedDense(24, sparsity=0.3)
    model = keras.Sequential([keras.Input((16,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=True)
    assert model.jit_compile
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype("float32")
    before = to_numpy(layer.scores)
    model.train_on_batch(x, rng.standard_normal((8, 24)).astype("float32"))
    scores = to_numpy(layer.scores)
    assert not np.array_equal(scores, before)
    effective = to_numpy(layer.frozen_kernel) * numpy_keep_mask(scores, layer.num_removed)
    expected = x @ effective + to_numpy(layer.bias)
    np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
@pytest.mark.parametrize("make", [dense, einsum_dense])
def test_low_precision_policies_keep_float32_scores(make, policy):
    layer = make(dtype=policy)
    randomize(layer)
    x = np.ones((2, 10) if make is dense else (2, 5, 10), "float32")
    y = layer(x)
    assert layer.scores.dtype == "float32"
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"

    def loss():
        return keras.ops.sum(keras.ops.cast(layer(x), "float32"))

    grad = to_numpy(gradient(loss, layer.scores))
    assert keras.backend.standardize_dtype(grad.dtype) == "float32"
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("make", [dense, einsum_dense])
def test_config_round_trip(make):
    layer = make(sparsity=0.3)
    randomize(layer)
    config = layer.get_config()
    assert config["sparsity"] == 0.3
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build((None, 10) if make is dense else (None, None, 10))
    clone.set_weights(layer.get_weights())
    x = np.ones((2, 10) if make is dense else (2, 5, 10), "float32")
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(layer(x)))


@pytest.mark.parametrize("make", [dense, einsum_dense])
def test_registered_for_keras_serialization(make):
    layer = make()
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_mft>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer) and restored.sparsity == layer.sparsity


def test_config_of_layers_masked_in_place_rebuilds_them(model):
    lora = model.backbone.transformer_layers[0]._self_attention_layer._query_dense
    lora.enable_lora(2)
    keras_mft.wrap(model, layers=[0], targets=["q", "up"], seed=0)
    magnitude = tiny_llama()
    keras_mft.wrap(magnitude, layers=[0], targets=["up"], score_init="magnitude")
    # A layer of a global group: rebuilt on its own, it is a group of one.
    global_ = tiny_llama(num_layers=1)
    keras_mft.wrap(global_, targets=["down"], selection="global", sparsity=0.3, seed=0)
    up = model.backbone.transformer_layers[0]._feedforward_intermediate_dense
    up_magnitude = magnitude.backbone.transformer_layers[0]._feedforward_intermediate_dense
    down_global = global_.backbone.transformer_layers[0]._feedforward_output_dense
    # The scores' origin: drawn from N(0, 0.02) by `wrap`, or |kernel|.
    initializer = up.get_config()["scores_initializer"]
    assert initializer["class_name"] == "RandomNormal" and initializer["config"]["stddev"] == 0.02
    assert up_magnitude.get_config()["scores_initializer"] == "magnitude"
    for layer, x in [
        (lora, np.ones((2, 5, 32), "float32")),
        (up, np.ones((2, 32), "float32")),
        (up_magnitude, np.ones((2, 32), "float32")),
        (down_global, np.ones((2, 48), "float32")),
    ]:
        clone = type(layer).from_config(layer.get_config())
        clone.build(x.shape)
        assert [v.name for v in clone.weights] == [v.name for v in layer.weights]
        assert [v.trainable for v in clone.weights] == [v.trainable for v in layer.weights]
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(layer(x)))
    fresh = keras_mft.MaskedDense(4, scores_initializer="magnitude")
    fresh.build((None, 8))
    np.testing.assert_array_equal(to_numpy(fresh.scores), np.abs(to_numpy(fresh.frozen_kernel)))


def test_refuses_lora_afterwards_and_quantization():
    layer = dense()
    assert "quantize" not in type(layer).__dict__  # Keras' own, which asks the class first
    with pytest.raises(ValueError, match="holds masks and cannot be quantized.*bake"):
        layer.quantize("int8")
    model = keras.Sequential([keras.Input((10,)), layer])
    with pytest.raises(ValueError, match="holds masks"):
        model.quantize("int8")
    with pytest.raises(NotImplementedError, match="LoRA"):
        layer.enable_lora(2)


def test_set_sparsity_changes_the_mask_used_by_call():
    layer = dense(sparsity=0.1)
    randomize(layer)
    x = np.ones((1, 10), "float32")
    layer(x)  # the next selection starts from this one's threshold
    layer.set_sparsity(0.5)
    assert layer.sparsity == 0.5 and layer.num_removed == 30
    mask = numpy_keep_mask(to_numpy(layer.scores), 30)
    np.testing.assert_array_equal(to_numpy(layer.hard_mask()), mask)
    expected = x @ (to_numpy(layer.frozen_kernel) * mask) + to_numpy(layer.bias)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        layer.set_sparsity(1.2)
    assert layer.sparsity == 0.5


@pytest.mark.parametrize("on_gpu", [False, True])
def test_the_train_step_keeps_the_last_threshold_which_is_not_saved(on_gpu, tmp_path, monkeypatch):
    # On a GPU the compiled step starts each selection from the last threshold.
    monkeypatch.setattr(backends, "_on_gpu", lambda tensor: on_gpu)
    layer = dense(sparsity=0.25)
    randomize(layer)
    assert int(layer.last_threshold) == -1  # none yet: the first search is full
    model = keras.Sequential([keras.Input((10,)), layer])
    # A learning rate of 0 keeps the scores, so the threshold is known.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(np.ones((6, 10)), np.zeros((6, 6)), batch_size=2, epochs=1, verbose=0)
    scores = to_numpy(layer.scores)
    np.testing.assert_array_equal(to_numpy(layer.keep_mask()), numpy_keep_mask(scores, 15))
    assert int(layer.last_threshold) == numpy_threshold(scores, layer.num_removed)
    # Weights files hold the exact training state (kernel, bias, scores,
    # number removed), not this hint; a stale one only costs a full search.
    model.save_weights(tmp_path / "masked.weights.h5")
    with h5py.File(tmp_path / "masked.weights.h5") as file:
        saved = []
        file.visititems(
            lambda name, item: saved.append(name) if isinstance(item, h5py.Dataset) else None
        )
    assert len([name for name in saved if name.startswith("layers/")]) == 4, saved
    layer.last_threshold.assign(12345)
    np.testing.assert_array_equal(to_numpy(layer.keep_mask()), numpy_keep_mask(scores, 15))
