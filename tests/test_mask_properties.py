"""Property-based tests of mask selection (hypothesis), on the active backend."""

from unittest import mock

import keras
import numpy as np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_mft.masking import backends
from keras_mft.masking.mask import keep_mask
from keras_mft.masking.mask import num_removed
from keras_mft.masking.mask import select
from tests.shared.models import to_numpy
from tests.shared.references import numpy_keep_mask
from tests.shared.references import numpy_threshold

# Few distinct values force many ties; the edge values test the bit-pattern
# radix select at its ends (zeros of both signs, subnormals, the largest float).
EDGE_VALUES = [0.0, -0.0, 1e-45, -1e-45, 0.5, -0.5, 3.4e38, -3.4e38]
scores_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.one_of(
        st.sampled_from(EDGE_VALUES),
        st.floats(-2.0, 2.0, width=32, allow_subnormal=True),
    ),
)
ratios = st.floats(0.0, 1.0, exclude_max=True)
SETTINGS = settings(max_examples=40, deadline=None)


def mask_of(scores, removed):
    return to_numpy(keep_mask(keras.ops.convert_to_tensor(scores), removed))


@SETTINGS
@given(scores=scores_arrays, ratio=ratios)
def test_removes_exactly_floor_ratio_times_size(scores, ratio):
    removed = num_removed(scores.size, ratio)
    mask = mask_of(scores, removed)
    assert mask.shape == scores.shape
    assert int(np.sum(mask == 0.0)) == removed
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # Every removed |score| is <= every kept one.
    if 0 < removed < scores.size:
        assert np.abs(scores[mask == 0]).max() <= np.abs(scores[mask == 1]).min()


@SETTINGS
@given(scores=scores_arrays, ratio=ratios)
def test_ties_go_by_position_as_a_stable_sort(scores, ratio):
    removed = num_removed(scores.size, ratio)
    np.testing.assert_array_equal(mask_of(scores, removed), numpy_keep_mask(scores, removed))
    # Deterministic: the same input gives the same mask.
    np.testing.assert_array_equal(mask_of(scores, removed), mask_of(scores, removed))


@SETTINGS
@given(
    scores=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-1.0, 1.0, width=32),
    ),
    ratio=ratios,
)
def test_the_kernel_layout_does_not_matter(scores, ratio):
    # A 3-D EinsumDense kernel and the same weights as a 2-D matrix or a
    # vector get the same mask, entry for entry.
    removed = num_removed(scores.size, ratio)
    as_3d = mask_of(scores, removed)
    as_2d = mask_of(scores.reshape(scores.shape[0], -1), removed)
    as_1d = mask_of(scores.reshape(-1), removed)
    np.testing.assert_array_equal(as_3d.reshape(-1), as_2d.reshape(-1))
    np.testing.assert_array_equal(as_3d.reshape(-1), as_1d)


# One step of a run: the scores drift a little (the usual step), one score
# jumps anywhere, all become equal, the sparsity changes, or some scores are
# put on both sides of the edges of the last threshold's high bin.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("drift"), st.integers(0, 2**16), st.sampled_from([1e-6, 1e-4, 1e-2])),
        st.tuples(st.just("jump"), st.integers(0, 2**16), st.sampled_from(EDGE_VALUES)),
        st.tuples(st.just("equal"), st.floats(-2.0, 2.0, width=32)),
        st.tuples(st.just("sparsity"), ratios),
        st.tuples(st.just("bin_edges"), st.integers(0, 2**16)),
    ),
    max_size=8,
)
MAX_KEY = int(np.array(3.4028235e38, np.float32).view(np.int32))


def apply(step, scores, removed, last):
    """The scores and number removed after `step`."""
    kind, *args = step
    scores = scores.copy()
    if kind == "drift":
        seed, size = args
        noise = np.random.default_rng(seed).standard_normal(scores.shape)
        scores = np.clip(scores * (1 + size * noise), -3.4e38, 3.4e38).astype(np.float32)
    elif kind == "jump":
        index, value = args
        scores.flat[index % scores.size] = value
    elif kind == "equal":
        scores[...] = args[0]
    elif kind == "sparsity":
        removed = num_removed(scores.size, args[0])
    else:
        rng = np.random.default_rng(args[0])
        start = max(last, 0) >> 16 << 16
        keys = np.clip(start + np.array([-1, 0, 1, 2**16 - 1, 2**16, 2**16 + 1]), 0, MAX_KEY)
        chosen = rng.choice(keys, scores.size).astype(np.int32).view(np.float32)
        where = rng.random(scores.shape) < 0.5
        scores[where] = (chosen.reshape(scores.shape) * rng.choice([-1, 1], scores.shape))[where]
    return scores, removed


@SETTINGS
@given(
    scores=hnp.arrays(
        np.float32,
        st.sampled_from([(7,), (6, 9), (3, 4, 5)]),
        elements=st.floats(-2.0, 2.0, width=32, allow_subnormal=True),
    ),
    ratio=ratios,
    run=steps,
)
def test_each_step_of_a_run_gives_the_stable_sort_mask(scores, ratio, run):
    # Each step starts from the threshold of the step before, as a layer does
    # (on a GPU; a CPU searches in full every time).
    removed = num_removed(scores.size, ratio)
    last = -1
    for step in [("drift", 0, 0.0)] + run:
        scores, removed = apply(step, scores, removed, last)
        with mock.patch.object(backends, "_on_gpu", lambda tensor: True):
            keep, threshold = select(keras.ops.convert_to_tensor(scores), removed, last)
        np.testing.assert_array_equal(to_numpy(keep), numpy_keep_mask(scores, removed))
        last = int(to_numpy(threshold))
        if removed:
            assert last == numpy_threshold(scores, removed)
