"""keras_mft.save_masks / load_masks."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

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
    [
        "truncated",
        "empty",
        "bit flipped in the masks",
        "bit flipped in the header",
        "not a mask file",
    ],
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


def rewrite_header(path, change):
    """The file at `path` with its JSON header changed and a valid checksum."""
    data = path.read_bytes()[: -mask_file._DIGEST_BYTES]
    prefix = len(mask_file.MAGIC) + mask_file._LENGTH.size
    (length,) = mask_file._LENGTH.unpack_from(data, len(mask_file.MAGIC))
    header = json.loads(data[prefix : prefix + length])
    change(header)
    encoded = json.dumps(header).encode("utf-8")
    body = (
        mask_file.MAGIC + mask_file._LENGTH.pack(len(encoded)) + encoded + data[prefix + length :]
    )
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_a_file_from_another_version_of_the_same_format_loads(saved, batch):
    model, path = saved
    rewrite_header(path, lambda header: header.update(keras_mft_version="0.0.1"))
    fresh = wrapped(seed=3)
    keras_mft.load_masks(fresh, path)
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))


def set_first(key, value):
    return lambda header: header["masks"][0].update({key: value})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda header: header.update(format=2), "it has format 2, and this keras-mft"),
        (set_first("shape", [2**40, 2**40]), "is inconsistent"),
        (set_first("shape", [-4, 8]), "is incomplete"),
        (set_first("shape", "float32"), "is incomplete"),
        (set_first("nbytes", 2**62), "is inconsistent"),
        (set_first("offset", -1), "is incomplete"),
        (set_first("sparsity", "a lot"), "is incomplete"),
        (lambda header: header["masks"][0].pop("path"), "is incomplete"),
        (lambda header: header["masks"][0].pop("kernel_sha256"), "is incomplete"),
        (set_first("num_removed", "many"), "is incomplete"),
        (set_first("num_removed", 10**9), "is inconsistent"),
        (lambda header: header.update(masks=[]), "lists no masks"),
        (lambda header: header.update(masks=7), "lists no masks"),
        (lambda header: header.update(masks=[7]), "is incomplete"),
    ],
)
def test_refuses_hostile_headers_before_allocating(saved, change, message, monkeypatch):
    _, path = saved
    rewrite_header(path, change)
    unpacked = []
    monkeypatch.setattr(
        mask_file.np, "unpackbits", lambda *a, **k: unpacked.append(1) or np.unpackbits(*a, **k)
    )
    model = wrapped(seed=5)
    before = scores_of(model)
    with pytest.raises(ValueError, match=message):
        keras_mft.load_masks(model, path)
    assert_unchanged(model, before)
    # Records are checked in file order: the damaged first one is never unpacked.
    assert not unpacked


def test_apply_masks_refuses_impossible_masks_before_changing_the_model(saved):
    # A valid checksum, but bits that sparsity 0.3 cannot give (they remove 20%).
    _, path = saved
    rewrite_header(path, lambda header: [record.update(sparsity=0.3) for record in header["masks"]])
    model = tiny_llama()
    trainable = [variable.trainable for variable in model.variables]
    with pytest.raises(ValueError, match=r"removes \d+ weights, but sparsity 0.3 removes"):
        keras_mft.apply_masks(model, path)
    assert not any(is_masked(layer) for layer in model._flatten_layers())
    assert [variable.trainable for variable in model.variables] == trainable


def test_refuses_a_header_nested_too_deeply(saved):
    _, path = saved
    encoded = b'{"format": 1, "masks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    body = mask_file.MAGIC + mask_file._LENGTH.pack(len(encoded)) + encoded
    path.write_bytes(body + hashlib.sha256(body).digest())
    for read in (keras_mft.describe_masks, lambda p: keras_mft.load_masks(wrapped(seed=5), p)):
        with pytest.raises(ValueError, match="nested too deeply"):
            read(path)


@pytest.mark.backend_independent
def test_refuses_what_is_not_a_regular_file(tmp_path):
    fifo, zero = tmp_path / "fifo.mask", tmp_path / "zero.mask"
    os.mkfifo(fifo)
    os.symlink("/dev/zero", zero)
    for path in (fifo, zero, tmp_path):
        with pytest.raises(ValueError, match="is not a regular file"):
            keras_mft.describe_masks(path)


KEEP_SAVING = """
import sys
import keras_mft
from tests.test_mask_file import wrapped
models = [wrapped(seed=1), wrapped(seed=2)]
print("ready", flush=True)
for step in range(10**6):
    keras_mft.save_masks(models[step % 2], sys.argv[1])
"""


def test_sigkill_during_saves_leaves_a_valid_file(saved, tmp_path):
    _, path = saved
    child = subprocess.Popen(
        [sys.executable, "-c", KEEP_SAVING, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert child.stdout.readline().strip() == "ready"
    for delay in (0.3, 0.05, 0.2):
        time.sleep(delay)
        os.kill(child.pid, 0)  # still saving
    child.send_signal(signal.SIGKILL)
    child.wait()
    # Whatever moment the kill hit, the file is one complete save.
    keras_mft.load_masks(wrapped(seed=5), path)


def test_saved_file_has_the_usual_permissions(saved):
    _, path = saved
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_saving_again_keeps_the_file_permissions(saved):
    model, path = saved
    os.chmod(path, 0o600)
    keras_mft.save_masks(model, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
