"""`histogram`: how many entries fall in each bin, for mask selection.

`keras.ops.segment_sum` counts them on every backend, inside `jit` too. On
PyTorch it scatters slowly: for the 45 million keys of a 4096x11008 matrix it
took 1.8 s on a 2-core CPU, against 0.05 s for `torch.bincount`
(`keras.ops.bincount` cannot be traced on JAX). So PyTorch uses
`torch.bincount`, and there, entries left out by `where` are dropped before
counting instead of being counted as zeros (0.18 s against 0.23 s when a
small share of a 4096x11008 matrix is counted).
"""

import keras
from keras import ops


def histogram(bins, num_bins, where=None):
    """int32 counts of each value in `bins`, an int32 tensor of values in [0, num_bins).

    Only the entries where the boolean tensor `where` is true are counted;
    all of them when it is None.
    """
    if keras.backend.backend() == "torch":
        import torch

        if where is not None:
            bins = bins[where]
        return torch.bincount(bins, minlength=num_bins).to(torch.int32)
    counts = ops.ones_like(bins) if where is None else ops.cast(where, "int32")
    return ops.segment_sum(counts, bins, num_segments=num_bins)
