"""The paper's learning-rate schedule: linear warm-up, then linear decay to 0."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mft")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Hugging Face's `get_linear_schedule_with_warmup`, step for step.

    With `warmup = int(warmup_fraction * total_steps)`, step `s` (from 0) gets

        learning_rate * s / warmup                                  if s < warmup
        learning_rate * max(0, (total_steps - s) / (total_steps - warmup))  otherwise

    so with warm-up the first step has a learning rate of 0, as in the
    paper's run.

    Args:
        learning_rate: the peak learning rate (the paper: 2e-5).
        total_steps: the number of training steps.
        warmup_fraction: the share of `total_steps` spent warming up (0.03).

    Example:

    ```python
    schedule = keras_mft.LinearWarmupDecay(2e-5, total_steps=1000)
    optimizer = keras_mft.PaperAdamW(schedule)
    ```
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_fraction: float = 0.03):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be a positive int. Received: {total_steps!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"`warmup_fraction` must be in [0, 1). Received: {warmup_fraction!r}")
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction

    @property
    def warmup_steps(self):
        # int(), not round(): Hugging Face's scripts truncate.
        return int(self.total_steps * self.warmup_fraction)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.warmup_steps
        rising = step / max(1, warmup)
        falling = (self.total_steps - step) / max(1, self.total_steps - warmup)
        fraction = ops.where(step < warmup, rising, ops.maximum(falling, 0.0))
        return self.learning_rate * fraction

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
        }
