"""Property-based tests of mask selection (hypothesis), on the active backend."""

import keras
import numpy as np
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_mft.mask import keep_mask
from keras_mft.mask import num_removed
from tests.conftest import to_numpy
from tests.test_mask import numpy_keep_mask

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
SETTINGS = settings(max_examples=60, deadline=None)


def select(scores, removed):
    return to_numpy(keep_mask(keras.ops.convert_to_tensor(scores), removed))


@SETTINGS
@given(scores=scores_arrays, ratio=ratios)
def test_removes_exactly_floor_ratio_times_size(scores, ratio):
    removed = num_removed(scores.size, ratio)
    mask = select(scores, removed)
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
    np.testing.assert_array_equal(select(scores, removed), numpy_keep_mask(scores, removed))
    # Deterministic: the same input gives the same mask.
    np.testing.assert_array_equal(select(scores, removed), select(scores, removed))


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
    as_3d = select(scores, removed)
    as_2d = select(scores.reshape(scores.shape[0], -1), removed)
    as_1d = select(scores.reshape(-1), removed)
    np.testing.assert_array_equal(as_3d.reshape(-1), as_2d.reshape(-1))
    np.testing.assert_array_equal(as_3d.reshape(-1), as_1d)
