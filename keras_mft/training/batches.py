"""`Batches`: training batches in a seeded order that a resumed run continues exactly.

Each pass over the data has its own permutation, drawn from the seed and the
pass' number, so step `i` of a run is always the same rows: a run resumed
from a backup taken after step `i` goes on with step `i + 1`, as if it had
never stopped. KerasHub's `CausalLM.fit` takes arrays or a `tf.data.Dataset`
(not a `keras.utils.PyDataset`), so the batches come as a `tf.data.Dataset`;
Keras feeds it to every backend.
"""

import math

import numpy as np


class Batches:
    """The batches of `epochs` passes over `data`, shuffled by `seed`.

    Args:
        data: `(x, y, sample_weight)` arrays, `x` a dict of arrays, as
            `keras_mft.instruction_dataset` returns them.
        batch_size: rows per batch; the last batch of a pass may be smaller.
        epochs: passes over the data.
        seed: int; the same seed gives the same order on every backend.
        part: `(index, count)`: this process's share of each batch, the
            `index`-th of `count` equal slices, where several processes feed
            one data-parallel batch; every batch must divide by `count`.

    Example:

    ```python
    batches = Batches(data, batch_size=8, epochs=2, seed=0)
    model.fit(batches.dataset(), steps_per_epoch=batches.steps_per_pass, epochs=2)
    ```
    """

    def __init__(self, data, batch_size, epochs, seed, part=(0, 1)):
        self.data, self.batch_size, self.seed, self.part = data, batch_size, seed, part
        self.rows = len(data[1])
        self.steps_per_pass = math.ceil(self.rows / batch_size)
        self.total_steps = self.steps_per_pass * epochs
        last = self.rows - (self.steps_per_pass - 1) * batch_size
        if batch_size % part[1] or last % part[1]:
            raise ValueError(
                f"{part[1]} processes share each batch, so its rows must divide by {part[1]}: "
                f"the batches have {batch_size} rows and the last of a pass {last}. Choose "
                "a batch size and a number of records that both divide by it."
            )

    def rows_of(self, step):
        """The row indices of batch `step` (0-based, counted over all passes)."""
        epoch, batch = divmod(step, self.steps_per_pass)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        return order[batch * self.batch_size : (batch + 1) * self.batch_size]

    def dataset(self, start=0):
        """A `tf.data.Dataset` of the batches from step `start` to the end."""
        import tensorflow as tf

        x, y, sample_weight = self.data

        def generate():
            index, count = self.part
            for step in range(start, self.total_steps):
                rows = self.rows_of(step)
                share = len(rows) // count
                rows = rows[index * share : (index + 1) * share]
                yield {key: value[rows] for key, value in x.items()}, y[rows], sample_weight[rows]

        def spec(array):
            return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))

        signature = ({key: spec(value) for key, value in x.items()}, spec(y), spec(sample_weight))
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
