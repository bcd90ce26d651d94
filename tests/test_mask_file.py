"""keras_mft.save_masks / load_masks."""

import os

import numpy as np
import pytest

import keras_mft
from keras_mft import mask_file
from keras_mft.masked_layers import is_masked
from tests.conftest import logits_of
from tests.conftest import tiny_llama
from tests.conftest import to_numpy


def wrapped(seed=0, model_seed=0, **kwargs):
    kwargs = {"layers": "0:2", "sparsity": 0.2, **kwargs}
    return keras_mft.wrap(tiny_llama(seed=model_seed), seed=seed, **kwargs)


def scores_of(model):
    return [to_numpy(v).copy() for v in model.trainable_variables]


def assert_unchanged(model, scores):
    for variable, before in zip(model.trainable_variables, scores):
        np.testing.assert_array_equal(to_numpy(variable), before)


@pytest.fixture
def saved(tmp_path):
    model = wrapped(seed=0)
    path = tmp_path / "band.mask"
    keras_mft.save_masks(model, path)
    return model, path


def test_round_trip_onto_a_fresh_model_gives_identical_logits(saved, batch):
    model, path = saved
    fresh = wrapped(seed=123)
    assert not np.array_equal(logits_of(fresh, batch), logits_of(model, batch))
    keras_mft.load_masks(fresh, path)
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))
    for a, b in zip(
        [layer for layer in model._flatten_layers() if is_masked(layer)],
        [layer for layer in fresh._flatten_layers() if is_masked(layer)],
    ):
        np.testing.assert_array_equal(to_numpy(a.hard_mask()), to_numpy(b.hard_mask()))


def test_file_is_one_bit_per_weight(saved):
    model, path = saved
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    header_and_checksum = 8 + 4 + 32
    size = os.path.getsize(path)
    assert weights / 8 <= size - header_and_checksum <= weights / 8 + 14 * (1 + 400)
    assert open(path, "rb").read(8) == b"KERASMFT"


@pytest.mark.parametrize(
    "other, message",
    [
        ({"model_seed": 1}, "frozen kernel differs"),
        ({"layers": "1:3"}, "does not match this model's masked layers"),
        ({"targets": ["q"]}, "does not match this model's masked layers"),
        ({"sparsity": 0.1}, "saved with sparsity 0.2"),
    ],
)
def test_refuses_masks_of_another_model(saved, other, message):
    _, path = saved
    model = wrapped(seed=5, **other)
    before = scores_of(model)
    with pytest.raises(ValueError, match=message):
        keras_mft.load_masks(model, path)
    assert_unchanged(model, before)


def corrupt(data, how):
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "empty":
        return b""
    if how == "bit flipped in the masks":
        flipped = bytearray(data)
        flipped[-40] ^= 0x01
        return bytes(flipped)
    if how == "bit flipped in the header":
        flipped = bytearray(data)
        flipped[20] ^= 0x10
        return bytes(flipped)
    if how == "not a mask file":
        return b"PK\x03\x04" + data[4:]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["truncated", "empty", "bit flipped in the masks", "bit flipped in the header", "not a mask file"],
)
def test_refuses_damaged_files(saved, tmp_path, how):
    _, path = saved
    damaged = tmp_path / "damaged.mask"
    damaged.write_bytes(corrupt(path.read_bytes(), how))
    model = wrapped(seed=5)
    before = scores_of(model)
    with pytest.raises(ValueError, match="not a valid keras-mft mask file"):
        keras_mft.load_masks(model, damaged)
    assert_unchanged(model, before)


def test_refuses_an_unwrapped_model(saved):
    _, path = saved
    with pytest.raises(ValueError, match="call `keras_mft.wrap"):
        keras_mft.load_masks(tiny_llama(), path)
    with pytest.raises(ValueError, match="call `keras_mft.wrap"):
        keras_mft.save_masks(tiny_llama(), path)


def test_interrupted_save_leaves_the_previous_file(saved, monkeypatch):
    model, path = saved
    previous = path.read_bytes()

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(mask_file.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        keras_mft.save_masks(wrapped(seed=9), path)
    assert path.read_bytes() == previous
    assert os.listdir(path.parent) == [path.name]
