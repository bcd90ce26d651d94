"""`Batches`: a seeded order over passes, and a resumed dataset that goes on from any step."""

import numpy as np
import pytest

from keras_mft.training.batches import Batches


def data(rows=7, length=3):
    token_ids = np.arange(rows * length, dtype="int32").reshape(rows, length)
    x = {"token_ids": token_ids, "padding_mask": np.ones((rows, length), bool)}
    return x, token_ids + 1, np.ones((rows, length), "float32")


@pytest.mark.backend_independent
def test_each_pass_is_a_seeded_permutation_of_the_rows():
    batches = Batches(data(), batch_size=3, epochs=2, seed=5)
    assert (batches.steps_per_pass, batches.total_steps) == (3, 6)
    passes = [np.concatenate([batches.rows_of(s) for s in range(p * 3, p * 3 + 3)]) for p in (0, 1)]
    for rows in passes:
        assert sorted(rows) == list(range(7))  # every row once; the last batch has 1
    assert not np.array_equal(passes[0], passes[1])  # each pass in its own order
    again = Batches(data(), batch_size=3, epochs=2, seed=5)
    assert all(np.array_equal(batches.rows_of(s), again.rows_of(s)) for s in range(6))
    other = Batches(data(), batch_size=3, epochs=2, seed=6)
    assert any(not np.array_equal(batches.rows_of(s), other.rows_of(s)) for s in range(6))


@pytest.mark.backend_independent
def test_a_resumed_dataset_yields_the_batches_that_were_left():
    batches = Batches(data(), batch_size=3, epochs=2, seed=0)
    whole = list(batches.dataset().as_numpy_iterator())
    resumed = list(batches.dataset(start=4).as_numpy_iterator())
    assert len(whole) == 6 and len(resumed) == 2
    x, y, sample_weight = data()
    for step, (bx, by, bw) in enumerate(whole):
        rows = batches.rows_of(step)
        assert np.array_equal(bx["token_ids"], x["token_ids"][rows])
        assert np.array_equal(by, y[rows]) and np.array_equal(bw, sample_weight[rows])
    for (ax, ay, _), (bx, by, _) in zip(whole[4:], resumed, strict=True):
        assert np.array_equal(ax["token_ids"], bx["token_ids"]) and np.array_equal(ay, by)


@pytest.mark.backend_independent
def test_processes_feed_equal_slices_that_make_the_whole_batch():
    whole = list(Batches(data(8), batch_size=4, epochs=1, seed=0).dataset().as_numpy_iterator())
    parts = [
        list(Batches(data(8), 4, 1, 0, part=(i, 2)).dataset().as_numpy_iterator()) for i in (0, 1)
    ]
    for step, (_, y, _) in enumerate(whole):
        first, second = parts[0][step], parts[1][step]
        assert np.array_equal(np.concatenate([first[1], second[1]]), y)
        assert len(first[1]) == 2
    with pytest.raises(ValueError, match="2 processes share each batch.*the last of a pass 3"):
        Batches(data(7), batch_size=4, epochs=1, seed=0, part=(0, 2))
