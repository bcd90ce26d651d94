"""The paper's learning-rate schedule: linear warm-up, then linear decay to 0."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mft")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Rises linearly to `learning_rate`, then falls linearly to 0.

    Args:
        learning_rate: the peak learning rate (the paper: 2e-5).
        total_steps: the number of training steps.
        warmup_fraction: the share of `total_steps` spent warming up (the
            paper: 0.03).

    Example:

    ```python
    schedule = keras_mft.LinearWarmupDecay(2e-5, total_steps=1000)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.0)
    ```
    """

    def __init__(self, learning_rate, total_steps, warmup_fraction=0.03):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"`total_steps` must be a positive int. Received: {total_steps!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"`warmup_fraction` must be in [0, 1). Received: {warmup_fraction!r}")
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(1.0, round(self.warmup_fraction * self.total_steps))
        rising = (step + 1.0) / warmup
        falling = (self.total_steps - step) / max(1.0, self.total_steps - warmup)
        fraction = ops.clip(ops.minimum(rising, falling), 0.0, 1.0)
        return self.learning_rate * fraction

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
        }
