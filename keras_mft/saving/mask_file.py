"""Mask files: the learned masks of a model, one bit per masked weight.

A mask file is a [safetensors](https://huggingface.co/docs/safetensors) file,
so any safetensors reader can open it and nothing in it is executed:

| part      | content                                                          |
|-----------|------------------------------------------------------------------|
| 8 bytes   | little-endian uint64 length N of the header                      |
| N bytes   | safetensors' JSON header: each tensor's dtype, shape and offsets, |
|           | and `__metadata__["keras_mft"]`, one JSON string (below)         |
| payload   | per masked kernel, keyed by the kernel's variable path, a uint8  |
|           | tensor of its keep mask, `numpy.packbits(..., bitorder="little")` |
|           | and, keyed `PATH:fingerprint`, 256 float32 samples of the kernel  |

The `keras_mft` JSON holds `format` (2), `keras_mft_version`, `wrap` (the
`MaskConfig` that placed the masks, as `get_config()` gives it, or null when
no one config did, as for named masks of other blocks used together) and
`masks`: one record per masked kernel with its `path`, `shape`, `sparsity`,
`selection`, `num_removed`, the SHA-256 of its packed bits (`bits_sha256`)
and the `fingerprint` of the frozen kernel the masks were learned on:

- `dtype`: the kernel's dtype when saved;
- `sha256`: SHA-256 of the kernel cast to float32;
- `norm`: the kernel's L2 norm;
- and the tensor `PATH:fingerprint`: the kernel's entries, as float32, at
  256 positions that its size fixes (`_sample_positions`). (Files written
  before keras-mft kept these as JSON, `positions` and `values`, still load.)

A load in the same dtype must match `sha256` exactly; in another dtype (a
float32 mask on a bfloat16 load of the same checkpoint) no hash survives the
rounding, so the sampled values and the norm must agree within the rounding
of the two dtypes, which another model's weights do not.
"""

import hashlib
import json
import math
import os
import stat
import struct
import tempfile

import keras
import numpy as np
import safetensors
import safetensors.numpy

from keras_mft.masking import architectures
from keras_mft.masking import named_masks
from keras_mft.masking import selection as selections
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.mask import check_sparsity
from keras_mft.masking.wrapping import is_wrapped
from keras_mft.masking.wrapping import masked_layers_of
from keras_mft.masking.wrapping import wrap
from keras_mft.version import __version__

FORMAT = 2
METADATA_KEY = "keras_mft"
# A header this long holds the records of thousands of kernels.
MAX_HEADER_BYTES = 32 * 2**20
SAMPLE_SIZE = 256
SAMPLE_SEED = 0
SAMPLES = ":fingerprint"  # the key of a kernel's samples: its path, then this
# The largest rounding error of a cast to each dtype: relative (unit roundoff)
# and absolute (half the smallest subnormal, where float16 loses precision).
ROUNDING = {
    "float32": (0.0, 0.0),
    "bfloat16": (2.0**-8, 0.0),
    "float16": (2.0**-11, 2.0**-25),
}


def save_masks(model: keras.Model, path: str | os.PathLike) -> None:
    """Writes the current masks of a wrapped model to the file `path`.

    Of a model holding named masks, the masks in use are written. The file
    is written beside `path` and renamed over it, so a reader never sees a
    half-written file and an interrupted save leaves the old one intact.

    Args:
        model: a model returned by `keras_mft.wrap`.
        path: where to write, e.g. `"math_band.mask"`.
    """
    tensors, records = {}, []
    layers = named_masks.layers_in_use(model)
    if not layers:
        raise ValueError("No mask of this model is in use: choose some with `keras_mft.use_masks`.")
    for layer in layers:
        keep = keras.ops.convert_to_numpy(layer.keep_mask()).reshape(-1)
        tensors[layer.kernel_path] = bits = np.packbits(keep, bitorder="little")
        records.append(
            {
                "path": layer.kernel_path,
                "shape": list(layer.frozen_kernel.shape),
                "sparsity": layer.sparsity,
                "selection": layer.selection.name,
                "num_removed": int(np.sum(~keep)),
                "bits_sha256": _sha256(bits),
                "fingerprint": _fingerprint(layer.frozen_kernel),
            }
        )
        # The samples as a tensor: as JSON text they outweighed the masks of a small kernel.
        fingerprint = records[-1]["fingerprint"]
        tensors[layer.kernel_path + SAMPLES] = fingerprint.pop("values")
        del fingerprint["positions"]
    configs = {layer.mask_config for layer in layers}
    config = configs.pop() if len(configs) == 1 else None
    header = {
        "format": FORMAT,
        "keras_mft_version": __version__,
        "wrap": config.get_config() if config else None,
        "masks": records,
    }
    metadata = {METADATA_KEY: json.dumps(header)}
    _write_atomically(path, safetensors.numpy.save(tensors, metadata=metadata))


def load_masks(model: keras.Model, path: str | os.PathLike, name: str | None = None) -> keras.Model:
    """Sets the masks of a model to those saved in `path`, wrapping it if needed.

    A model that is not wrapped yet is wrapped with the file's `MaskConfig`,
    as KerasHub's `load_lora_weights` enables LoRA; a wrapped model must be
    wrapped like the saved one. With a `name`, the masks are kept under that
    name beside those already loaded (see `keras_mft.use_masks`).

    The file must come from the same model: the same masked kernels, shapes
    and frozen weights, in any of float32, bfloat16 and float16. Everything
    is checked before the model changes. Each score becomes 1.0 where the
    saved mask keeps a weight and 0.0 elsewhere, which gives the saved masks
    exactly; to resume training with the learned scores, use
    `model.save_weights` / `model.load_weights`.

    Args:
        model: a KerasHub causal LM (or backbone) that `keras_mft.wrap`
            accepts, wrapped or not, with the weights the masks were learned on.
        path: a file written by `keras_mft.save_masks`.
        name: keep the masks under this name, e.g. `"math"`; the model must
            not be wrapped, or hold named masks only.

    Returns:
        The same model object, wrapped.

    Example:

    ```python
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2", seed=0)
    keras_mft.save_masks(model, "band.mask")
    fresh = keras_mft.tiny_smollm2()  # the same weights, not wrapped
    keras_mft.load_masks(fresh, "band.mask")  # wraps it as the file says
    # keras_mft.bake(fresh), or keep training
    ```
    """
    config, records = _read(path)
    layer_of = _projections(model, records, path)
    if name is None and is_wrapped(model):
        _check_wrapped_like_saved(model, records, path)
    elif name is None:
        _check_config(model, config, records, path)
    for kernel_path, (_, _, layer) in layer_of.items():
        _check_kernel(kernel_path, records[kernel_path], layer, path)
    _check_bits(records, layer_of, path)
    # Every check has passed: from here on the model is changed.
    if name is not None:
        named_masks.add(model, name, records, layer_of, config)
        return model
    if not is_wrapped(model):
        wrap(model, config)
    for kernel_path, (_, _, layer) in layer_of.items():
        record = records[kernel_path]
        if record["sparsity"] != layer.sparsity:  # saved in the middle of a ramp
            layer.set_sparsity(record["sparsity"])
        layer.scores.assign(record["bits"].astype("float32").reshape(record["shape"]))
    return model


def describe_masks(path: str | os.PathLike) -> list[dict]:
    """What a mask file holds, read without a model (and fully validated).

    Returns:
        `[{"path", "shape", "sparsity", "selection", "num_removed"}]`, one per
        masked kernel, in file order.
    """
    fields = ("path", "shape", "sparsity", "selection")
    return [
        {**{field: record[field] for field in fields}, "num_removed": int(np.sum(~record["bits"]))}
        for record in _read(path)[1].values()
    ]


def _projections(model, records, path):
    """`{kernel path: (block index, alias, layer)}` of the kernels of `records`.

    Raises if the model lacks one of them (the file belongs to another model)
    or holds one quantized.
    """
    backbone = architectures.backbone_of(model)
    where = {}
    for index, block in enumerate(backbone.transformer_layers):
        for alias, layer in architectures.projections_of(backbone, block).items():
            where[architectures.kernel_of(layer).path] = (index, alias, layer)
    unknown = sorted(set(records) - set(where))
    if unknown:
        raise ValueError(
            f"The mask file {path} masks kernels that this model does not have: "
            f"{unknown[:3]}. It belongs to another model: load the model the "
            "masks were learned on."
        )
    for kernel_path in records:
        layer = where[kernel_path][2]
        if layer.quantization_mode is not None:
            raise ValueError(
                f"{kernel_path} is quantized ({layer.quantization_mode}): masks go onto "
                "the float model. Load the float checkpoint, load the masks, bake, "
                "then quantize the baked model."
            )
    return {kernel_path: where[kernel_path] for kernel_path in records}


def _check_wrapped_like_saved(model, records, path):
    """Refuses a file whose kernels, selections or sparsities are not the wrapped model's."""
    by_path = {layer.kernel_path: layer for layer in masked_layers_of(model)}
    missing, extra = sorted(set(by_path) - set(records)), sorted(set(records) - set(by_path))
    if missing or extra:
        raise ValueError(
            f"The mask file {path} does not match this model's masked layers. "
            f"Masked here but not in the file: {missing}. In the file but not "
            f"masked here: {extra}. Wrap the model with the `layers` and "
            "`targets` used when the file was saved, or load the file onto "
            "a model that is not wrapped yet."
        )
    for kernel_path, layer in by_path.items():
        for setting, here in (("selection", layer.selection.name), ("sparsity", layer.sparsity)):
            if records[kernel_path][setting] != here:
                raise ValueError(
                    f"{kernel_path}: the mask file was saved with {setting} "
                    f"{records[kernel_path][setting]!r} but this layer has {setting} "
                    f"{here!r}. Wrap with the same {setting}."
                )


def _check_config(model, config, records, path):
    """Refuses a file whose `MaskConfig` does not wrap exactly its masks' kernels."""
    if config is None:
        raise ValueError(
            f"The mask file {path} holds masks placed by no one `MaskConfig` (named "
            "masks used together), so `wrap` cannot rebuild its layout. Load it "
            "with a `name`, or wrap the model by hand and load it into the wrapped model."
        )
    try:
        planned = config.plan(architectures.backbone_of(model))
    except ValueError as error:
        raise ValueError(f"The settings in {path} do not fit this model: {error}") from None
    planned = {architectures.kernel_of(layer).path: sel.name for _, layer, _, sel in planned}
    if planned != {kernel_path: record["selection"] for kernel_path, record in records.items()}:
        raise ValueError(
            f"{path} is not a valid keras-mft mask file: its wrap settings "
            f"{config.get_config()} do not give its masks' kernels and selection. "
            "Save it again with `keras_mft.save_masks`."
        )


def _check_kernel(kernel_path, record, layer, path):
    """Refuses a record whose kernel's shape or weights differ from `layer`'s."""
    kernel = architectures.kernel_of(layer)
    if tuple(record["shape"]) != tuple(kernel.shape):
        raise ValueError(
            f"{kernel_path}: the mask file holds shape {record['shape']} "
            f"but the model's kernel has shape {list(kernel.shape)}."
        )
    if not _same_kernel(record["fingerprint"], kernel):
        raise ValueError(
            f"{kernel_path}: the frozen kernel differs from the one the "
            f"masks in {path} were learned on, beyond any rounding to "
            "float32, bfloat16 or float16: the file belongs to another model. "
            "Load the same model (same preset and weights) before using these masks."
        )


def _check_bits(records, layer_of, path):
    """Refuses masks that their record's selection and sparsity cannot give.

    A file with a valid checksum can still be crafted or written by a bug. A
    global selection's group is one projection over the blocks.
    """
    removed_by_group, expected_by_group = {}, {}
    for kernel_path, (_, alias, layer) in layer_of.items():
        record = records[kernel_path]
        keep, removed = record["bits"], int(np.sum(~record["bits"]))
        selection = selections.get(record["selection"])
        selection.check(layer, record["shape"])
        if isinstance(selection, selections.NM):
            if record["sparsity"] != selection.fixed_sparsity or not _is_n_m(
                keep.reshape(record["shape"]), layer, selection
            ):
                raise ValueError(
                    f"{kernel_path}: the mask in {path} is not a {selection.name} "
                    "pattern. The file is corrupted."
                )
            continue
        expected = selection.num_removed(keep.size, check_sparsity(record["sparsity"]))
        if isinstance(selection, selections.Global):  # a group total, shared unevenly
            removed_by_group[alias] = removed_by_group.get(alias, 0) + removed
            expected_by_group[alias] = expected_by_group.get(alias, 0) + expected
        elif removed != expected:
            raise ValueError(
                f"{kernel_path}: the mask in {path} removes {removed} weights, but "
                f"sparsity {record['sparsity']} removes {expected}. The file is corrupted."
            )
    for group, removed in removed_by_group.items():
        if removed != expected_by_group[group]:
            raise ValueError(
                f"The mask file {path} removes {removed} weights from a global group, "
                f"but its sparsity removes {expected_by_group[group]}. The file is corrupted."
            )


def _is_n_m(keep, layer, selection):
    """Whether `keep` keeps exactly N of every M input weights of `layer`."""
    axes = selections.input_axes(layer)
    moved = np.moveaxis(keep, axes, range(len(axes)))
    inputs = int(np.prod(moved.shape[: len(axes)]))
    groups = moved.reshape(inputs // selection.m, selection.m, -1)
    return bool(np.all(groups.sum(axis=1) == selection.n))


def _sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _sample_positions(size):
    """The positions of a kernel of `size` entries that its fingerprint samples."""
    rng = np.random.default_rng(SAMPLE_SEED)
    return np.unique(rng.integers(0, size, min(SAMPLE_SIZE, size)))


def _fingerprint(kernel):
    """What identifies a kernel variable across casts; see the module docstring."""
    flat = keras.ops.convert_to_numpy(keras.ops.cast(kernel, "float32")).reshape(-1)
    positions = _sample_positions(flat.size)
    return {
        "dtype": keras.backend.standardize_dtype(kernel.dtype),
        "sha256": _sha256(flat),
        "positions": positions,
        "values": flat[positions],
        "norm": float(np.linalg.norm(flat.astype("float64"))),
    }


def _same_kernel(fingerprint, kernel):
    """Whether `kernel` is the fingerprinted one, up to rounding to its dtype."""
    flat = keras.ops.convert_to_numpy(keras.ops.cast(kernel, "float32")).reshape(-1)
    if _sha256(flat) == fingerprint["sha256"]:
        return True
    # Both may be roundings of one checkpoint: allow the errors of both casts.
    saved = ROUNDING.get(fingerprint["dtype"], (0.0, 0.0))
    loaded = ROUNDING.get(keras.backend.standardize_dtype(kernel.dtype), (0.0, 0.0))
    relative, absolute = saved[0] + loaded[0], saved[1] + loaded[1]
    if relative == 0.0:  # the same precision: only the same bytes are the same kernel
        return False
    values = np.asarray(fingerprint["values"], "float64")
    found = flat[fingerprint["positions"]].astype("float64")
    norm = np.linalg.norm(flat.astype("float64"))
    return bool(
        np.all(np.abs(found - values) <= relative * np.abs(values) + absolute)
        and abs(norm - fingerprint["norm"])
        <= relative * fingerprint["norm"] + absolute * math.sqrt(flat.size)
    )


def _write_atomically(path, data):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-mask-")
    try:
        # mkstemp makes the file private: keep an old file's permissions, or
        # give those `open` would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(
            temporary,
            stat.S_IMODE(os.stat(path).st_mode) if os.path.isfile(path) else 0o666 & ~umask,
        )
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _read(path):
    """Reads and validates a mask file: `(MaskConfig or None, {kernel path: record})`.

    Each record gets `bits`, its flat boolean keep mask. Everything is
    checked before safetensors allocates anything.
    """

    def refuse(problem):
        return ValueError(
            f"{path} is not a valid keras-mft mask file: {problem}. Save it "
            "again with `keras_mft.save_masks`."
        )

    # Only a regular file has a size to bound the read.
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"{path} is not a regular file (a directory, device, pipe or socket): "
            "give the path of a mask file."
        )
    with open(path, "rb") as file:
        start = file.read(8)
    if len(start) < 8:
        raise refuse("it is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", start)
    if length > MAX_HEADER_BYTES or 8 + length > info.st_size:
        raise refuse(
            f"its header claims {length:,} bytes, more than the file's {info.st_size:,} "
            f"or the {MAX_HEADER_BYTES:,} a mask file needs"
        )
    try:
        with safetensors.safe_open(path, framework="numpy") as file:
            header = _parsed_header((file.metadata() or {}).get(METADATA_KEY), refuse)
            records = [_checked_record(record, refuse) for record in header["masks"]]
            paths = [record["path"] for record in records]
            samples = [r["path"] + SAMPLES for r in records if "values" not in r["fingerprint"]]
            if len(set(paths)) != len(paths) or set(file.keys()) != {*paths, *samples}:
                raise refuse("its tensors are not those its records name")
            records = {record["path"]: _bits_of(file, record, refuse) for record in records}
            for record in records.values():
                _samples_of(file, record, refuse)
    except safetensors.SafetensorError as error:
        raise refuse(f"safetensors cannot read it ({error})") from None
    try:
        config = header.get("wrap") and MaskConfig.from_config(header["wrap"])
    except (TypeError, ValueError, AttributeError):
        raise refuse("its wrap settings are not those of a `MaskConfig`") from None
    return config or None, records


def _bits_of(file, record, refuse):
    """The record with its `bits`, after checking the tensor's dtype, shape and checksum."""
    kernel_path, size = record["path"], math.prod(record["shape"])
    tensor = file.get_slice(kernel_path)
    if tensor.get_dtype() != "U8" or tensor.get_shape() != [(size + 7) // 8]:
        raise refuse(
            f"the mask of {kernel_path} is {tensor.get_dtype()} of shape "
            f"{tensor.get_shape()}, not U8 of shape [{(size + 7) // 8}]"
        )
    packed = file.get_tensor(kernel_path)
    if _sha256(packed) != record["bits_sha256"]:
        raise refuse(f"the mask of {kernel_path} does not match its checksum (corrupted)")
    bits = np.unpackbits(packed, count=size, bitorder="little")
    return {**record, "bits": bits.astype(bool)}


def _samples_of(file, record, refuse):
    """Puts the fingerprint's sampled positions and values into `record`, checked."""
    fingerprint = record["fingerprint"]
    if "values" in fingerprint:  # a file that kept them as JSON
        fingerprint["positions"] = np.asarray(fingerprint["positions"], "int64")
        fingerprint["values"] = np.asarray(fingerprint["values"], "float32")
        return
    positions = _sample_positions(math.prod(record["shape"]))
    tensor = file.get_slice(record["path"] + SAMPLES)
    if tensor.get_dtype() != "F32" or tensor.get_shape() != [positions.size]:
        raise refuse(f"the fingerprint of {record['path']} is not {positions.size} float32 values")
    fingerprint["positions"] = positions
    fingerprint["values"] = file.get_tensor(record["path"] + SAMPLES)


def _parsed_header(text, refuse):
    """The JSON header of a mask file, with a non-empty `masks` list."""
    if text is None:
        raise refuse(f"it has no {METADATA_KEY!r} metadata")
    try:
        header = json.loads(text)
    except RecursionError:
        raise refuse("its header is nested too deeply") from None
    except ValueError:  # not JSON, or a number of more than 4,300 digits
        raise refuse("its header is not JSON that keras-mft can read") from None
    found = header.get("format") if isinstance(header, dict) else None
    if found != FORMAT:
        raise refuse(f"it has format {found!r}; keras-mft {__version__} reads format {FORMAT}")
    if not isinstance(header.get("masks"), list) or not header["masks"]:
        raise refuse("its header lists no masks")
    return header


def _natural(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value):
    return isinstance(value, str) and len(value) == 64


def _checked_record(record, refuse):
    """One mask record with every field present and of its type, or a refusal."""
    try:
        shape, fingerprint = list(record["shape"]), dict(record["fingerprint"])
        # The samples are a tensor, or JSON in a file written before.
        positions, values = fingerprint.get("positions", []), fingerprint.get("values", [])
        size = math.prod(shape)
        valid = (
            isinstance(record["path"], str)
            and shape
            and all(_natural(n) and n > 0 for n in shape)
            and _is_number(record["sparsity"])
            and 0.0 <= record["sparsity"] < 1.0
            and bool(selections.get(record["selection"]))
            and _natural(record["num_removed"])
            and _is_sha256(record["bits_sha256"])
            and isinstance(fingerprint["dtype"], str)
            and _is_sha256(fingerprint["sha256"])
            and isinstance(positions, list)
            and isinstance(values, list)
            and len(positions) == len(values) <= SAMPLE_SIZE
            and ("values" in fingerprint) == ("positions" in fingerprint)
            and all(_natural(p) and p < size for p in positions)
            and all(_is_number(v) for v in values)
            and _is_number(fingerprint["norm"])
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        valid = False
    if not valid:
        raise refuse("a mask record is incomplete or has a field of the wrong type")
    if record["num_removed"] > size:
        raise refuse(f"the record of {record['path']} is inconsistent")
    fields = ("path", "num_removed", "selection", "bits_sha256")
    return {
        **{f: record[f] for f in fields},
        "fingerprint": fingerprint,
        "shape": shape,
        "sparsity": float(record["sparsity"]),
    }
