"""How the removed entries are chosen: per matrix, globally, or N:M.

- `"per_matrix"` (the paper): each masked matrix removes its own
  `floor(sparsity * size)` smallest-|score| entries (`keras_mft.masking.mask`).
- `"global"`: the same projection of every masked block (e.g. all `q`
  kernels of the band) shares one threshold: the group removes as many
  entries in total, but a block may lose more and another fewer. The paper
  left this open ("mostly negative", no code).
- `"N:M"`, e.g. `"2:4"`: in every run of M consecutive weights along a
  kernel's input dimension, the N largest |score| are kept (2:4 is the
  layout that sparse tensor cores accelerate). The sparsity is (M - N) / M.

Each is a small object (`get(name)` makes one) with `keep(layer)`, a masked
layer's boolean mask; `fixed_sparsity`, set when the pattern fixes it; and
`check(layer, kernel_shape)`, which refuses a kernel the pattern cannot
cover. Of equal scores, the first (in flat order, a group's matrices stacked
in block order) is removed first, on every backend.
"""

import math
import re

from keras import ops

from keras_mft.masking.backends import remember
from keras_mft.masking.mask import num_removed
from keras_mft.masking.mask import select

_N_M = re.compile(r"^(\d+):(\d+)$")


def get(selection):
    """The selection object that `selection` names (`"per_matrix"`, `"global"`,
    `"N:M"`), or `selection` itself if it is one already."""
    if isinstance(selection, (PerMatrix, NM)):
        return selection
    if selection in (PerMatrix.name, Global.name):
        return PerMatrix() if selection == PerMatrix.name else Global()
    match = _N_M.match(selection) if isinstance(selection, str) else None
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return NM(n, m)
    raise ValueError(
        "`selection` must be 'per_matrix' (the paper: each matrix removes its "
        "own smallest scores), 'global' (one threshold per projection over "
        "the masked blocks) or 'N:M' with 0 < N < M, e.g. '2:4' (keep N of "
        f"every M weights along the input dimension). Received: selection={selection!r}"
    )


class PerMatrix:
    """Each matrix removes its own `floor(sparsity * size)` smallest |scores|."""

    name = "per_matrix"
    fixed_sparsity = None  # any sparsity in [0, 1)

    def check(self, layer, kernel_shape):
        """Raises if `layer`'s kernel cannot be masked this way (every kernel can)."""

    def num_removed(self, size, sparsity):
        """How many entries of a kernel of `size` entries this removes."""
        return num_removed(size, sparsity)

    def keep(self, layer):
        """The boolean mask of a masked `layer`: True where a weight is kept."""
        return _select(layer, _scores(layer), layer.num_removed_variable)


class Global(PerMatrix):
    """One threshold over a group: the same projection of every masked block.

    `keras_mft.wrap` gives the members of a group one `Global` object, whose
    `layers` lists them in block order. Each member selects over the whole
    group and keeps its own rows, so L members cost L times the work of
    per-matrix selection. A layer outside any group (built on its own, or
    from its config) is a group of one: its own threshold.
    """

    name = "global"

    def __init__(self, layers=()):
        self.layers = list(layers)

    def keep(self, layer):
        group = self.layers or [layer]
        if layer not in group:
            raise ValueError(f"Layer '{layer.name}' is not one of its global group's layers.")
        columns = layer.frozen_kernel.shape[-1]
        stacked = ops.concatenate(
            [ops.reshape(_scores(member), (-1, columns)) for member in group], axis=0
        )
        removed = sum(ops.convert_to_tensor(member.num_removed_variable) for member in group)
        keep = _select(layer, stacked, removed)
        rows = ops.shape(stacked)[0] // len(group)
        start = group.index(layer) * rows
        return ops.reshape(keep[start : start + rows], ops.shape(layer.scores))


class NM:
    """In every run of M consecutive input weights, the N largest |score| are kept."""

    def __init__(self, n, m):
        self.n, self.m = n, m
        self.name = f"{n}:{m}"
        self.fixed_sparsity = (m - n) / m

    def check(self, layer, kernel_shape):
        inputs = math.prod(kernel_shape[axis] for axis in input_axes(layer))
        if inputs % self.m:
            raise ValueError(
                f"Layer '{layer.name}' has {inputs} inputs, which do not split into "
                f"runs of {self.m} for a {self.name} mask. Choose an M that divides "
                f"{inputs}, or leave this projection out of `targets`."
            )

    def num_removed(self, size, sparsity):
        return size // self.m * (self.m - self.n)

    def keep(self, layer):
        return n_m_keep_mask(_scores(layer), self.n, self.m, input_axes(layer))


def _select(layer, scores, count):
    """`keras_mft.mask.select`, starting from `layer`'s last threshold and
    keeping the new one there."""
    keep, threshold = select(
        scores, ops.convert_to_tensor(count), ops.convert_to_tensor(layer.last_threshold)
    )
    remember(layer.last_threshold, threshold)
    return keep


def _scores(layer):
    # The scores get their gradient from `keras_mft.masking.mask.masked_kernel`.
    return ops.stop_gradient(ops.convert_to_tensor(layer.scores))


def input_axes(layer):
    """The kernel axes that `layer` contracts with its input."""
    equation = getattr(layer, "equation", None)
    if equation is None:  # Dense: (input, units)
        return (0,)
    inputs, rest = equation.split(",")
    kernel = rest.split("->")[0]
    return tuple(axis for axis, letter in enumerate(kernel) if letter in inputs)


def n_m_keep_mask(scores, n, m, axes):
    """True for the N largest |score| of every M consecutive input weights.

    Args:
        scores: float tensor shaped like the kernel.
        n, m: keep n of every m.
        axes: the kernel's input axes (see `input_axes`); their total size
            must be a multiple of m.
    """
    shape = tuple(scores.shape)
    others = tuple(axis for axis in range(len(shape)) if axis not in axes)
    order = axes + others
    inputs = math.prod(shape[axis] for axis in axes)
    magnitude = ops.abs(ops.transpose(scores, order))
    groups = ops.reshape(magnitude, (inputs // m, m, -1))
    # An entry's rank counts the smaller entries and the equal earlier ones.
    rank = 0
    for j in range(m):
        other = groups[:, j : j + 1, :]
        position = ops.reshape(ops.arange(m), (1, m, 1))
        before = ops.logical_or(
            ops.less(other, groups),
            ops.logical_and(ops.equal(other, groups), ops.less(j, position)),
        )
        rank = rank + ops.cast(before, "int32")
    keep = ops.greater_equal(rank, m - n)
    keep = ops.reshape(keep, [shape[axis] for axis in order])
    return ops.transpose(keep, [order.index(axis) for axis in range(len(shape))])
