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

    Example:

    ```python
    batches = Batches(data, batch_size=8, epochs=2, seed=0)
    model.fit(batches.dataset(), steps_per_epoch=batches.steps_per_pass, epochs=2)
    ```
    """

    def __init__(self, data, batch_size, epochs, seed):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rows = len(data[1])
        self.steps_per_pass = math.ceil(self.rows / batch_size)
        self.total_steps = self.steps_per_pass * epochs

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
            for step in range(start, self.total_steps):
                rows = self.rows_of(step)
                yield {key: value[rows] for key, value in x.items()}, y[rows], sample_weight[rows]

        def spec(array):
            return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))

        signature = ({key: spec(value) for key, value in x.items()}, spec(y), spec(sample_weight))
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
