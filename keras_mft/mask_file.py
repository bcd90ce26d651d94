"""Mask files: the learned masks of a model, one bit per masked weight.

Layout (all integers little-endian):

| bytes      | content                                                     |
|------------|-------------------------------------------------------------|
| 8          | magic `KERASMFT`                                            |
| 4          | uint32 length H of the header                               |
| H          | UTF-8 JSON header (below)                                   |
| payload    | each mask's bits, `numpy.packbits(..., bitorder="little")`  |
| 32         | SHA-256 of everything before it                             |

The header holds `format` (1), `keras_mft_version` and `masks`: one record per
masked kernel with its variable `path`, `shape`, `sparsity`, `selection`
(`"per_matrix"` when absent), `num_removed`, the SHA-256 of the frozen
kernel's bytes (`kernel_sha256`) and where its bits lie in the payload
(`offset`, `nbytes`). Nothing in the file is executed or unpickled.
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

from keras_mft import architectures
from keras_mft import selection as selections
from keras_mft.mask import check_sparsity
from keras_mft.selection import input_axes
from keras_mft.version import __version__
from keras_mft.wrapping import masked_layers_of
from keras_mft.wrapping import wrap

MAGIC = b"KERASMFT"
FORMAT = 1
_LENGTH = struct.Struct("<I")
_DIGEST_BYTES = 32


def save_masks(model, path):
    """Writes the current masks of a wrapped model to the file `path`.

    It is written beside `path` and renamed over it, so a reader never sees
    a half-written file and an interrupted save leaves the old one intact.

    Args:
        model: a model returned by `keras_mft.wrap`.
        path: where to write, e.g. `"math_band.mask"`.
    """
    records, chunks, offset = [], [], 0
    for layer in masked_layers_of(model):
        keep = keras.ops.convert_to_numpy(layer.keep_mask())
        bits = np.packbits(keep.reshape(-1), bitorder="little").tobytes()
        records.append(
            {
                "path": layer.kernel_path,
                "shape": list(layer.frozen_kernel.shape),
                "sparsity": layer.sparsity,
                "selection": layer.selection.name,
                "num_removed": int(np.sum(~keep)),
                "kernel_sha256": _fingerprint(layer),
                "offset": offset,
                "nbytes": len(bits),
            }
        )
        chunks.append(bits)
        offset += len(bits)
    header = json.dumps(
        {"format": FORMAT, "keras_mft_version": __version__, "masks": records}
    ).encode("utf-8")
    body = MAGIC + _LENGTH.pack(len(header)) + header + b"".join(chunks)
    _write_atomically(path, body + hashlib.sha256(body).digest())


def load_masks(model, path):
    """Sets the masks of a wrapped model to those saved in `path`.

    The file must come from the same model: same masked kernels, shapes,
    sparsities and frozen weights, all checked before anything changes. Each
    score becomes 1.0 where the saved mask keeps a weight and 0.0 elsewhere,
    which gives the saved masks exactly. To resume training with the learned
    scores themselves, use `model.save_weights` / `model.load_weights`.

    Args:
        model: a model returned by `keras_mft.wrap`, wrapped with the same
            `layers`, `targets` and sparsities as the model that was saved.
        path: a file written by `keras_mft.save_masks`.
    """
    layers = masked_layers_of(model)
    records = _read_records(path)
    by_path = {layer.kernel_path: layer for layer in layers}
    missing = sorted(set(by_path) - set(records))
    extra = sorted(set(records) - set(by_path))
    if missing or extra:
        raise ValueError(
            f"The mask file {path} does not match this model's masked layers. "
            f"Masked here but not in the file: {missing}. In the file but not "
            f"masked here: {extra}. Wrap the model with the `layers` and "
            "`targets` used when the file was saved."
        )
    new_scores = []
    for kernel_path, layer in by_path.items():
        record = records[kernel_path]
        if record["selection"] != layer.selection.name:
            raise ValueError(
                f"{kernel_path}: the mask file was saved with selection "
                f"{record['selection']!r} but this layer uses {layer.selection.name!r}. "
                "Wrap with the same `selection`."
            )
        if record["sparsity"] != layer.sparsity:
            raise ValueError(
                f"{kernel_path}: the mask file was saved with sparsity "
                f"{record['sparsity']} but this layer has sparsity "
                f"{layer.sparsity}. Wrap with the same sparsity."
            )
        _check_kernel(kernel_path, record, layer, path)
        new_scores.append(record["bits"].astype("float32").reshape(record["shape"]))
    _check_bits(records, by_path, lambda kernel_path: id(by_path[kernel_path].selection), path)
    for layer, scores in zip(by_path.values(), new_scores):
        layer.scores.assign(scores)


def apply_masks(model, path):
    """Wraps a freshly loaded model as a mask file describes, and loads its masks.

    The blocks, projections and sparsities come from the file, so masks
    travel like adapters: load the base model, apply the file, then bake or
    keep training. Every check runs before the model is changed.

    Args:
        model: a KerasHub causal LM (or backbone) that `wrap` accepts, not
            wrapped, with the weights the masks were learned on.
        path: a file written by `keras_mft.save_masks`.

    Returns:
        The same model object, wrapped.
    """
    records = _read_records(path)
    backbone = architectures.backbone_of(model)
    where = {}
    for index, block in enumerate(backbone.transformer_layers):
        for alias, layer in architectures.projections_of(backbone, block).items():
            where[layer._kernel.path] = (index, alias, layer)  # plain layers: Keras' name
    unknown = sorted(set(records) - set(where))
    if unknown:
        raise ValueError(
            f"The mask file {path} masks kernels that this model does not have: "
            f"{unknown[:3]}. Load the model the masks were learned on."
        )
    names = {record["selection"] for record in records.values()}
    if len(names) != 1:
        raise ValueError(f"The mask file {path} mixes selections {sorted(names)}.")
    selection = names.pop()
    blocks = sorted({where[p][0] for p in records})
    aliases = [a for a in architectures.ALIASES if any(where[p][1] == a for p in records)]
    sparsities = {"attention": set(), "mlp": set()}
    for kernel_path, record in records.items():
        _, alias, layer = where[kernel_path]
        sparsities[architectures.GROUP_OF[alias]].add(record["sparsity"])
        _check_kernel(kernel_path, record, layer, path)
    if len(records) != len(blocks) * len(aliases) or any(len(s) > 1 for s in sparsities.values()):
        raise ValueError(
            f"The mask file {path} does not mask the same projections in every "
            "block with one sparsity for attention and one for the MLP, so "
            "`wrap` cannot rebuild its layout. Wrap the model by hand and use "
            "`keras_mft.load_masks`."
        )
    _check_bits(records, {p: where[p][2] for p in records}, lambda p: where[p][1], path)
    # Every check has passed: from here on the model is changed.
    only = {group: values.pop() if values else None for group, values in sparsities.items()}
    if selections.get(selection).fixed_sparsity is not None:
        only = {"attention": None, "mlp": None}  # N:M fixes the sparsity
    wrap(
        model,
        layers=blocks,
        targets=aliases,
        selection=selection,
        attention_sparsity=only["attention"],
        mlp_sparsity=only["mlp"],
    )
    load_masks(model, path)
    return model


def describe_masks(path):
    """What a mask file holds, read without a model (and fully validated).

    Returns:
        `[{"path", "shape", "sparsity", "selection", "num_removed"}]`, one per
        masked kernel, in file order.
    """
    return [
        {
            "path": kernel_path,
            "shape": list(record["shape"]),
            "sparsity": record["sparsity"],
            "selection": record["selection"],
            "num_removed": int(np.sum(~record["bits"])),
        }
        for kernel_path, record in _read_records(path).items()
    ]


def _check_kernel(kernel_path, record, layer, path):
    """Refuses a record whose kernel's shape or bytes differ from `layer`'s."""
    # `_kernel`: Keras' own name for the stored kernel, masked or not yet.
    if tuple(record["shape"]) != tuple(layer._kernel.shape):
        raise ValueError(
            f"{kernel_path}: the mask file holds shape {record['shape']} "
            f"but the model's kernel has shape {list(layer._kernel.shape)}."
        )
    if record["kernel_sha256"] != _fingerprint(layer):
        raise ValueError(
            f"{kernel_path}: the frozen kernel differs from the one the "
            f"masks in {path} were learned on. Load the same model "
            "(same preset and weights) before using these masks."
        )


def _check_bits(records, layers, group_of, path):
    """Refuses masks that their record's selection and sparsity cannot give.

    A file with a valid checksum can still be crafted or written by a bug.
    `layers` maps kernel paths to layers, masked or not yet; `group_of` maps
    a kernel path to the key of its global group.
    """
    removed_by_group, expected_by_group = {}, {}
    for kernel_path, layer in layers.items():
        record = records[kernel_path]
        keep = record["bits"]
        removed = int(np.sum(~keep))
        selection = selections.get(record["selection"])
        selection.check(layer)
        if isinstance(selection, selections.NM):
            if record["sparsity"] != selection.fixed_sparsity or not _is_n_m(
                keep, layer, selection
            ):
                raise ValueError(
                    f"{kernel_path}: the mask in {path} is not a {selection.name} "
                    "pattern. The file is corrupted."
                )
            continue
        expected = selection.num_removed(keep.size, check_sparsity(record["sparsity"]))
        if isinstance(selection, selections.Global):
            # A global group removes a total, shared unevenly by its members.
            group = group_of(kernel_path)
            removed_by_group[group] = removed_by_group.get(group, 0) + removed
            expected_by_group[group] = expected_by_group.get(group, 0) + expected
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
    """Whether flat `keep` keeps exactly N of every M input weights of `layer`."""
    axes = input_axes(layer)
    moved = np.moveaxis(keep.reshape(layer._kernel.shape), axes, range(len(axes)))
    inputs = int(np.prod(moved.shape[: len(axes)]))
    groups = moved.reshape(inputs // selection.m, selection.m, -1)
    return bool(np.all(groups.sum(axis=1) == selection.n))


def _fingerprint(layer):
    """SHA-256 of a layer's stored kernel."""
    kernel = keras.ops.convert_to_numpy(layer._kernel)
    return hashlib.sha256(np.ascontiguousarray(kernel).tobytes()).hexdigest()


def _write_atomically(path, data):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-mask-")
    try:
        # mkstemp makes the file private: keep an old file's permissions, or
        # give those `open` would.
        if os.path.isfile(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _read_records(path):
    """Reads and validates a mask file: {kernel path: record with `bits`}."""

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
    prefix = len(MAGIC) + _LENGTH.size
    with open(path, "rb") as file:
        data = file.read(info.st_size)
    if len(data) < prefix + _DIGEST_BYTES or not data.startswith(MAGIC):
        raise refuse("it does not start with the keras-mft mask header")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise refuse("its checksum does not match (truncated or corrupted)")
    (header_length,) = _LENGTH.unpack_from(body, len(MAGIC))
    if prefix + header_length > len(body):
        raise refuse("its header is longer than the file")
    try:
        header = json.loads(body[prefix : prefix + header_length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise refuse("its header is not JSON") from None
    except RecursionError:
        raise refuse("its header is nested too deeply") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise refuse(
            f"it has format {header.get('format') if isinstance(header, dict) else None!r}, "
            f"and this keras-mft ({__version__}) reads format {FORMAT}"
        )
    masks = header.get("masks")
    if not isinstance(masks, list) or not masks:
        raise refuse("its header lists no masks")
    payload = body[prefix + header_length :]
    records = {}
    expected_offset = 0
    for record in masks:
        record = _checked_record(record, refuse)
        kernel_path, shape = record["path"], record["shape"]
        offset, nbytes, size = record["offset"], record["nbytes"], math.prod(shape)
        if (
            offset != expected_offset
            or nbytes != (size + 7) // 8
            or offset + nbytes > len(payload)
            or kernel_path in records
            or record["num_removed"] > size
        ):
            raise refuse(f"the record of {kernel_path} is inconsistent")
        packed = np.frombuffer(payload, np.uint8, count=nbytes, offset=offset)
        bits = np.unpackbits(packed, count=size, bitorder="little")
        records[kernel_path] = {**record, "bits": bits.astype(bool)}
        expected_offset += nbytes
    if expected_offset != len(payload):
        raise refuse("its payload length does not match its header")
    return records


def _checked_record(record, refuse):
    """One mask record with every field present and of its type, or a refusal."""

    def natural(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    try:
        checked = {
            "path": record["path"],
            "shape": list(record["shape"]),
            "sparsity": record["sparsity"],
            "selection": record.get("selection", "per_matrix"),
            "num_removed": record["num_removed"],
            "kernel_sha256": record["kernel_sha256"],
            "offset": record["offset"],
            "nbytes": record["nbytes"],
        }
        valid = (
            isinstance(checked["path"], str)
            and checked["shape"]
            and all(natural(n) and n > 0 for n in checked["shape"])
            and isinstance(checked["sparsity"], (int, float))
            and not isinstance(checked["sparsity"], bool)
            and 0.0 <= checked["sparsity"] < 1.0
            and isinstance(checked["selection"], str)
            and natural(checked["num_removed"])
            and isinstance(checked["kernel_sha256"], str)
            and len(checked["kernel_sha256"]) == 64
            and natural(checked["offset"])
            and natural(checked["nbytes"])
        )
        if valid:
            selections.get(checked["selection"])
    except (KeyError, TypeError, ValueError, AttributeError):
        valid = False
    if not valid:
        raise refuse("a mask record is incomplete or has a field of the wrong type")
    checked["sparsity"] = float(checked["sparsity"])
    return checked
