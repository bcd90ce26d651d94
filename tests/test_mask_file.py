"""keras_mft.save_masks / load_masks."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import safetensors
import safetensors.numpy

import keras_mft
from keras_mft.saving import mask_file
from tests.shared.models import logits_of
from tests.shared.models import masked
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy


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
    for a, b in zip(masked(model), masked(fresh)):
        np.testing.assert_array_equal(to_numpy(a.hard_mask()), to_numpy(b.hard_mask()))


def test_file_is_safetensors_with_one_bit_per_weight(saved):
    model, path = saved
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    with safetensors.safe_open(path, framework="numpy") as file:
        header = json.loads(file.metadata()["keras_mft"])
        packed = {k: file.get_tensor(k) for k in file.keys() if not k.endswith(mask_file.SAMPLES)}
    assert set(packed) == set(keras_mft.masks_of(model))
    assert all(bits.dtype == np.uint8 for bits in packed.values())
    assert weights / 8 <= sum(bits.size for bits in packed.values()) <= weights / 8 + 14
    # The `MaskConfig` the model was wrapped with.
    assert header["wrap"] == {
        "layers": "0:2",
        "targets": None,
        "sparsity": 0.2,
        "attention_sparsity": None,
        "mlp_sparsity": None,
        "selection": "per_matrix",
        "score_init": "random",
        "seed": 0,
    }


@pytest.mark.parametrize(
    "other, message",
    [
        ({"model_seed": 1}, "frozen kernel differs"),
        ({"layers": "1:3"}, "does not match this model's masked layers"),
        ({"targets": ["q"]}, "does not match this model's masked layers"),
        ({"sparsity": 0.1}, "saved with sparsity 0.2"),
        ({"selection": "global"}, "saved with selection 'per_matrix'"),
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


def test_save_refuses_an_unwrapped_model(saved):
    _, path = saved
    with pytest.raises(ValueError, match="call `keras_mft.wrap"):
        keras_mft.save_masks(tiny_llama(), path)


def test_loading_onto_an_unwrapped_model_wraps_it_as_saved(saved, batch):
    model, path = saved
    fresh = tiny_llama()
    assert keras_mft.load_masks(fresh, path) is fresh
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))
    assert set(keras_mft.masks_of(fresh)) == set(keras_mft.masks_of(model))


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.2), ("float16", 0.03)])
def test_float32_masks_load_onto_a_cast_of_the_same_model(saved, batch, dtype, tolerance):
    model, path = saved
    cast = keras_mft.load_masks(tiny_llama(dtype=dtype), path)
    for kernel_path, keep in keras_mft.masks_of(model).items():
        np.testing.assert_array_equal(keras_mft.masks_of(cast)[kernel_path], keep)
    expected = logits_of(model, batch)
    found = np.asarray(logits_of(cast, batch), "float32")
    np.testing.assert_allclose(found, expected, atol=tolerance * np.abs(expected).max())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_refuses_another_model_in_any_dtype_and_leaves_it_unwrapped(saved, dtype):
    _, path = saved
    other = tiny_llama(seed=1, dtype=dtype)
    trainable = [variable.trainable for variable in other.variables]
    with pytest.raises(ValueError, match="belongs to another model"):
        keras_mft.load_masks(other, path)
    assert not masked(other)
    assert [variable.trainable for variable in other.variables] == trainable


def test_refuses_a_quantized_model_and_says_to_bake_first(saved, fast_quantize):
    _, path = saved
    quantized = tiny_llama()
    quantized.backbone.quantize("int8")
    with pytest.raises(ValueError, match="quantized \\(int8\\): masks go onto the float model"):
        keras_mft.load_masks(quantized, path)
    assert not masked(quantized)


def test_a_kernel_changed_beyond_rounding_is_another_kernel():
    kernel = np.random.default_rng(0).normal(0.0, 0.02, (64, 48)).astype("float32")
    fingerprint = mask_file._fingerprint(kernel_variable(kernel))
    for dtype in ("float32", "bfloat16", "float16"):
        assert mask_file._same_kernel(fingerprint, kernel_variable(kernel, dtype))
        # The smallest change is a float32 step: only its own dtype can see it.
        nudged = np.nextafter(kernel, np.inf)
        same = mask_file._same_kernel(fingerprint, kernel_variable(nudged, dtype))
        assert same == (dtype != "float32")
        scaled = kernel * np.float32(1 + 2**-6)
        assert not mask_file._same_kernel(fingerprint, kernel_variable(scaled, dtype))


def kernel_variable(values, dtype="float32"):
    return keras.Variable(keras.ops.cast(values, dtype), dtype=dtype)


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


def rewrite_header(path, change, tensors=None):
    """The file at `path` with its keras-mft metadata changed."""
    with safetensors.safe_open(path, framework="numpy") as file:
        header = json.loads(file.metadata()["keras_mft"])
        original = {key: file.get_tensor(key) for key in file.keys()}
    change(header)
    metadata = {"keras_mft": json.dumps(header)}
    path.write_bytes(safetensors.numpy.save(tensors or original, metadata=metadata))


def test_the_fingerprint_samples_are_a_tensor_and_files_with_them_as_json_load(saved, batch):
    model, path = saved
    with safetensors.safe_open(path, framework="numpy") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
        header = json.loads(file.metadata()["keras_mft"])
    masks = [key for key in tensors if not key.endswith(mask_file.SAMPLES)]
    assert sorted(tensors) == sorted([*masks, *(key + mask_file.SAMPLES for key in masks)])
    assert all(tensors[key + mask_file.SAMPLES].dtype == np.float32 for key in masks)
    # The bits, 1 KiB of samples per kernel, and a header of a few hundred bytes per kernel.
    weights = sum(np.prod(record["shape"]) for record in header["masks"])
    assert path.stat().st_size < weights / 8 + len(masks) * (256 * 4 + 600) + 2048
    # As files written before kept them: JSON positions and values, no tensors.
    for record in header["masks"]:
        positions = mask_file._sample_positions(int(np.prod(record["shape"])))
        values = tensors.pop(record["path"] + mask_file.SAMPLES)
        record["fingerprint"].update(positions=positions.tolist(), values=values.tolist())
    rewrite_header(path, lambda saved_header: saved_header.update(header), tensors)
    fresh = keras_mft.load_masks(tiny_llama(), path)
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))
    with pytest.raises(ValueError, match="belongs to another model"):
        keras_mft.load_masks(tiny_llama(seed=1, dtype="bfloat16"), path)


def test_a_file_from_another_version_of_the_same_format_loads(saved, batch):
    model, path = saved
    rewrite_header(path, lambda header: header.update(keras_mft_version="0.0.1"))
    fresh = wrapped(seed=3)
    keras_mft.load_masks(fresh, path)
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))


def test_a_file_with_the_wrap_settings_of_before_mask_config_loads(saved, batch):
    # Files written before `MaskConfig` hold five of its fields.
    model, path = saved
    wrap = {"layers": [0, 1], "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
    wrap |= {"attention_sparsity": 0.2, "mlp_sparsity": 0.2, "selection": "per_matrix"}
    rewrite_header(path, lambda header: header.update(wrap=wrap))
    fresh = keras_mft.load_masks(tiny_llama(), path)
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))


def set_first(key, value):
    return lambda header: header["masks"][0].update({key: value})


def set_fingerprint(key, value):
    return lambda header: header["masks"][0]["fingerprint"].update({key: value})


def assert_refused_before_unpacking(path, message, monkeypatch):
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


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda header: header.update(format=3), "it has format 3; keras-mft"),
        (lambda header: header.update(format=1), "it has format 1; keras-mft"),
        (set_first("shape", [2**40, 2**40]), r"not U8 of shape \[\d{20,}\]"),
        (set_first("shape", [-4, 8]), "is incomplete"),
        (set_first("shape", "float32"), "is incomplete"),
        (set_first("sparsity", "a lot"), "is incomplete"),
        (set_first("bits_sha256", "0" * 64), "does not match its checksum"),
        (lambda header: header["masks"][0].pop("path"), "is incomplete"),
        (lambda header: header["masks"][0].pop("fingerprint"), "is incomplete"),
        (set_fingerprint("positions", [10**12]), "is incomplete"),
        (set_fingerprint("values", [1.0]), "is incomplete"),
        (set_fingerprint("norm", "big"), "is incomplete"),
        (set_first("num_removed", "many"), "is incomplete"),
        (set_first("num_removed", 10**9), "is inconsistent"),
        (lambda header: header.update(masks=[]), "lists no masks"),
        (lambda header: header.update(masks=7), "lists no masks"),
        (lambda header: header.update(masks=[7]), "is incomplete"),
        (lambda header: header["masks"].pop(), "tensors are not those its records name"),
    ],
)
def test_refuses_hostile_headers_before_allocating(saved, change, message, monkeypatch):
    _, path = saved
    rewrite_header(path, change)
    assert_refused_before_unpacking(path, message, monkeypatch)


def test_refuses_a_header_length_beyond_the_file_before_opening_it(saved, monkeypatch):
    _, path = saved
    data = path.read_bytes()
    opened = []
    monkeypatch.setattr(mask_file.safetensors, "safe_open", lambda *a, **k: opened.append(1))
    for length in (2**62, len(data), mask_file.MAX_HEADER_BYTES + 1):
        path.write_bytes(length.to_bytes(8, "little") + data[8:])
        with pytest.raises(ValueError, match=f"its header claims {length:,} bytes"):
            keras_mft.describe_masks(path)
    assert not opened


def test_refuses_masks_of_another_dtype_or_shape(saved):
    _, path = saved
    with safetensors.safe_open(path, framework="numpy") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    first = next(iter(tensors))
    for wrong in (tensors[first].astype("uint16"), tensors[first][:-1]):
        rewrite_header(path, lambda header: None, {**tensors, first: wrong})
        with pytest.raises(ValueError, match=f"the mask of {first} is U(8|16) of shape"):
            keras_mft.describe_masks(path)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({}, "it has no 'keras_mft' metadata"),
        ({"keras_mft": "{not json"}, "its header is not JSON"),
        ({"keras_mft": '{"format": ' + "9" * 5000 + "}"}, "its header is not JSON"),
        ({"keras_mft": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    ],
)
def test_refuses_metadata_that_is_not_a_header(saved, metadata, message):
    _, path = saved
    with safetensors.safe_open(path, framework="numpy") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))
    with pytest.raises(ValueError, match=message):
        keras_mft.describe_masks(path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"layers": [0]}, "its wrap settings .* do not give its masks' kernels"),
        ({"selection": "global"}, "its wrap settings .* do not give its masks' kernels"),
        ({"layers": "0:9"}, "do not fit this model: The band '0:9' selects no valid blocks"),
        ({"rank": 4}, "its wrap settings are not those of a `MaskConfig`"),
        ({"sparsity": 2.0}, "its wrap settings are not those of a `MaskConfig`"),
    ],
)
def test_refuses_wrap_settings_that_contradict_the_masks(saved, settings, message):
    _, path = saved
    rewrite_header(path, lambda header: header["wrap"].update(settings))
    model = tiny_llama()
    with pytest.raises(ValueError, match=message):
        keras_mft.load_masks(model, path)
    assert not masked(model)


def test_refuses_impossible_masks_before_changing_the_model(saved):
    # A valid checksum, but bits that sparsity 0.3 cannot give (they remove 20%).
    _, path = saved

    def change(header):
        header["wrap"].update(sparsity=0.3)
        for record in header["masks"]:
            record.update(sparsity=0.3)

    rewrite_header(path, change)
    model = tiny_llama()
    trainable = [variable.trainable for variable in model.variables]
    with pytest.raises(ValueError, match=r"removes \d+ weights, but sparsity 0.3 removes"):
        keras_mft.load_masks(model, path)
    assert not masked(model)
    assert [variable.trainable for variable in model.variables] == trainable


def test_masks_saved_in_the_middle_of_a_ramp_load_as_saved(batch, tmp_path):
    model = wrapped(seed=0)
    for layer in masked(model):
        layer.set_sparsity(0.05)  # a ramp towards 0.2, a quarter of the way
    keras_mft.save_masks(model, tmp_path / "ramp.mask")
    fresh = keras_mft.load_masks(tiny_llama(), tmp_path / "ramp.mask")
    assert {layer.sparsity for layer in masked(fresh)} == {0.05}
    np.testing.assert_array_equal(logits_of(fresh, batch), logits_of(model, batch))


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
from tests.shared.models import tiny_llama
models = [keras_mft.wrap(tiny_llama(), layers="0:2", sparsity=0.2, seed=s) for s in (1, 2)]
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
