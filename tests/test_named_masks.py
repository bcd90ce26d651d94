"""Several named masks on one model: keras_mft.load_masks(name=...) and use_masks."""

import numpy as np
import pytest

import keras_mft
from keras_mft.masking.layers import is_masked
from tests.shared.models import logits_of
from tests.shared.models import tiny_llama


def save(path, **wrap_arguments):
    keras_mft.save_masks(keras_mft.wrap(tiny_llama(), **wrap_arguments), path)
    return path


def baked(*paths):
    """The base model with each file's masks baked in, one after the other."""
    model = tiny_llama()
    for path in paths:
        model = keras_mft.bake(keras_mft.load_masks(model, path))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("masks")
    return {
        "math": save(directory / "math.mask", layers="0:2", sparsity=0.2, seed=1),
        "code": save(directory / "code.mask", layers="1:3", sparsity=0.3, seed=2),
        # Other kernels than math's: block 2, and the MLP of block 0.
        "style": save(directory / "style.mask", layers=[2], targets=["gate", "up"], seed=3),
        "global": save(directory / "global.mask", layers="0:2", selection="global", seed=4),
    }


@pytest.fixture(scope="module")
def host(files):
    model = tiny_llama()
    for name in ("math", "code", "style"):
        assert keras_mft.load_masks(model, files[name], name=name) is model
    return model


def test_each_switch_gives_that_mask_baked_alone(host, files, batch):
    assert keras_mft.mask_names(host) == ["code", "math", "style"]
    # The last one loaded is in use.
    np.testing.assert_array_equal(logits_of(host, batch), logits_of(baked(files["style"]), batch))
    for name in ("math", "code", "math"):
        keras_mft.use_masks(host, name)
        expected = logits_of(baked(files[name]), batch)
        np.testing.assert_array_equal(logits_of(host, batch), expected)
        # The compiled predict function sees the switch too (compilation
        # may fuse the arithmetic differently: float32 rounding apart).
        found = np.asarray(host.predict(batch, verbose=0))
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5)


def test_no_mask_is_the_base_model_exactly(host, batch):
    keras_mft.use_masks(host, None)
    np.testing.assert_array_equal(logits_of(host, batch), logits_of(tiny_llama(), batch))


def test_masks_of_different_kernels_combine(host, files, batch):
    keras_mft.use_masks(host, ["math", "style"])
    expected = logits_of(baked(files["math"], files["style"]), batch)
    np.testing.assert_array_equal(logits_of(host, batch), expected)


def test_overlapping_masks_are_refused_and_nothing_changes(host, batch):
    keras_mft.use_masks(host, "code")
    before = logits_of(host, batch)
    with pytest.raises(ValueError, match="'math' and 'code' both mask transformer_layer_1/"):
        keras_mft.use_masks(host, ["math", "code"])
    with pytest.raises(ValueError, match=r"No masks are loaded under the names \['chat'\]"):
        keras_mft.use_masks(host, "chat")
    np.testing.assert_array_equal(logits_of(host, batch), before)


def test_saving_writes_the_masks_in_use(host, files, tmp_path, batch):
    keras_mft.use_masks(host, "code")
    keras_mft.save_masks(host, tmp_path / "again.mask")
    assert keras_mft.describe_masks(tmp_path / "again.mask") == keras_mft.describe_masks(
        files["code"]
    )
    # Masks used together are saved together, and load as one named mask.
    keras_mft.use_masks(host, ["math", "style"])
    keras_mft.save_masks(host, tmp_path / "both.mask")
    both = keras_mft.load_masks(tiny_llama(), tmp_path / "both.mask", name="both")
    np.testing.assert_array_equal(logits_of(both, batch), logits_of(host, batch))
    with pytest.raises(ValueError, match="cannot rebuild its layout"):
        keras_mft.load_masks(tiny_llama(), tmp_path / "both.mask")
    keras_mft.use_masks(host, None)
    with pytest.raises(ValueError, match="No mask of this model is in use"):
        keras_mft.save_masks(host, tmp_path / "none.mask")


def test_bake_keeps_the_mask_in_use(files, batch):
    model = tiny_llama()
    keras_mft.load_masks(model, files["math"], name="math")
    keras_mft.load_masks(model, files["code"], name="code")
    keras_mft.use_masks(model, "math")
    keras_mft.bake(model)
    assert not any(is_masked(layer) for layer in model._flatten_layers())
    np.testing.assert_array_equal(logits_of(model, batch), logits_of(baked(files["math"]), batch))


def test_refusals_leave_the_model_as_it_was(files, batch):
    model = tiny_llama()
    keras_mft.load_masks(model, files["math"], name="math")
    with pytest.raises(ValueError, match="'math' is already loaded"):
        keras_mft.load_masks(model, files["code"], name="math")
    with pytest.raises(ValueError, match="Named masks are per-matrix masks"):
        keras_mft.load_masks(model, files["global"], name="global")
    with pytest.raises(ValueError, match="belongs to another model"):
        keras_mft.load_masks(tiny_llama(seed=1), files["math"], name="math")
    assert keras_mft.mask_names(model) == ["math"]
    np.testing.assert_array_equal(logits_of(model, batch), logits_of(baked(files["math"]), batch))
    training = keras_mft.wrap(tiny_llama(), layers="0:2")
    with pytest.raises(ValueError, match="wrapped for training"):
        keras_mft.load_masks(training, files["math"], name="math")
    with pytest.raises(ValueError, match="holds no named masks"):
        keras_mft.use_masks(training, "math")
