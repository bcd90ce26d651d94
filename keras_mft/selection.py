"""How the removed entries are chosen: per matrix, globally, or N:M.

- `"per_matrix"` (the paper): each masked matrix removes its own
  `floor(sparsity * size)` smallest-|score| entries (`keras_mft.mask`).
- `"global"`: the same projection of every masked block (e.g. all `q`
  kernels of the band) shares one threshold. The group removes as many
  entries in total as per-matrix selection would, but a block may lose more
  and another fewer. The paper left this open ("mostly negative", no code).
- `"N:M"`, e.g. `"2:4"`: in every run of M consecutive weights along a
  kernel's input dimension, the N largest |score| are kept and the other
  M - N removed (2:4 is the layout that sparse tensor cores accelerate).
  The sparsity is then exactly (M - N) / M.

Ties are broken by position everywhere: of equal scores, the one that comes
first (in the flat order of the matrix, or of the group's matrices stacked in
block order) is removed first, so the same scores give the same mask on every
backend.
"""

import re

from keras import ops

from keras_mft.mask import keep_mask

PER_MATRIX = "per_matrix"
GLOBAL = "global"
_N_M = re.compile(r"^(\d+):(\d+)$")


def parse_selection(selection):
    """`selection` validated: `"per_matrix"`, `"global"`, or an `(n, m)` tuple."""
    if selection in (PER_MATRIX, GLOBAL):
        return selection
    match = _N_M.match(selection) if isinstance(selection, str) else None
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return n, m
    raise ValueError(
        "`selection` must be 'per_matrix' (the paper: each matrix removes its "
        "own smallest scores), 'global' (one threshold per projection over "
        "the masked blocks) or 'N:M' with 0 < N < M, e.g. '2:4' (keep N of "
        f"every M weights along the input dimension). Received: selection={selection!r}"
    )


def check_n_m(layer, n, m):
    """Raises unless `layer`'s kernel splits into runs of `m` input weights."""
    shape = layer._kernel.shape
    inputs = 1
    for axis in input_axes(layer):
        inputs *= shape[axis]
    if inputs % m:
        raise ValueError(
            f"Layer '{layer.name}' has {inputs} inputs, which do not split into "
            f"runs of {m} for a {n}:{m} mask. Choose an M that divides {inputs}, "
            "or leave this projection out of `targets`."
        )


def n_m_sparsity(n, m):
    return (m - n) / m


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
    inputs = 1
    for axis in axes:
        inputs *= shape[axis]
    magnitude = ops.abs(ops.transpose(scores, order))
    groups = ops.reshape(magnitude, (inputs // m, m, -1))
    # The rank of each entry in its group, smallest first, ties by position:
    # an entry's rank counts the smaller entries and the equal earlier ones.
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


class GlobalGroup:
    """Masked layers that share one threshold: one projection over the masked blocks.

    Each layer of the group computes the group's mask from every member's
    scores and keeps its own rows; the group removes the sum of its members'
    `removed_count`. So with L members a step runs L selections over L
    matrices each, L times the work of per-matrix selection (L = 4 for the
    paper's band), and holds a copy of the group's scores while selecting.
    A plain Python object, so Keras does not track the members as sublayers
    of each other.
    """

    def __init__(self, layers):
        shapes = {tuple(layer._kernel.shape) for layer in layers}
        if len(shapes) != 1:
            raise ValueError(f"A global group needs kernels of one shape. Received: {shapes}")
        self.layers = list(layers)

    def keep_mask(self, layer):
        """The boolean mask of `layer` under the group's shared threshold."""
        columns = layer._kernel.shape[-1]
        stacked = ops.concatenate(
            [ops.reshape(ops.stop_gradient(member.scores), (-1, columns)) for member in self.layers],
            axis=0,
        )
        removed = sum(ops.convert_to_tensor(member.removed_count) for member in self.layers)
        keep = keep_mask(stacked, removed)
        rows = ops.shape(stacked)[0] // len(self.layers)
        start = self.layers.index(layer) * rows
        return ops.reshape(keep[start : start + rows], ops.shape(layer.scores))
