"""The score budget B: how far a run lets the scores travel.

Adam moves each score by about the learning rate per step, whatever its
gradient, so with weight decay 0 the masks of a run depend only on

    B = (sum of the learning rates over all steps) / (std of the initial scores)

the furthest a score can travel, in units of the initial spread. The paper's
runs (peak 2e-5, linear schedule, 2 epochs of batches of 128, std 0.02) give:

| domain                | examples | steps | B    |
|-----------------------|---------:|------:|-----:|
| math                  |   60,000 |   938 | 0.47 |
| instruction following |   56,000 |   876 | 0.44 |
| code                  |   30,000 |   470 | 0.23 |

At 10% removed the threshold is about 0.13 std, so B = 0.47 lets a score
cross it several times over, while a few dozen steps at 2e-5 (B ~ 0.01)
barely move the mask from its random start.
"""

import math
import numbers
import warnings

import keras
import numpy as np

from keras_mft.masking.wrapping import scores_of
from keras_mft.training.schedule import LinearWarmupDecay

PAPER_BUDGETS = {"math": 0.47, "instruction_following": 0.44, "code": 0.23}
DEFAULT_BUDGET = PAPER_BUDGETS["math"]
# Below this, the scores barely cross the threshold: `warn_if_small` says so.
SMALL_BUDGET = 0.05
# The std of the random initial scores (`keras_mft.wrap`, as in the paper's code).
INITIAL_SCORE_STD = 0.02


def learning_rate_sum(learning_rate, steps):
    """The sum of the learning rates (a float or a schedule) of steps 0 to `steps - 1`."""
    if steps <= 0:
        return 0.0
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        rates = keras.ops.convert_to_numpy(learning_rate(keras.ops.arange(steps)))
        return float(np.sum(rates, dtype="float64"))
    return float(learning_rate) * steps


def budget(learning_rate, steps, score_std=INITIAL_SCORE_STD):
    """B of a run of `steps` steps at `learning_rate` (a float or a schedule).

    Example:

    ```python
    # The paper's math run: 938 steps, peak 2e-5, linear schedule.
    schedule = keras_mft.LinearWarmupDecay(2e-5, total_steps=938)
    keras_mft.score_budget.budget(schedule, 938)  # 0.469
    ```
    """
    return learning_rate_sum(learning_rate, steps) / score_std


def learning_rate_for_budget(
    budget, total_steps, warmup_fraction=0.03, score_std=INITIAL_SCORE_STD
):
    """The peak learning rate of `LinearWarmupDecay` that gives the budget `budget`.

    Example:

    ```python
    # The paper's budget in the 22 steps of `keras-mft demo`:
    keras_mft.score_budget.learning_rate_for_budget(0.47, 22)  # 8.2e-4
    ```
    """
    if not budget > 0:
        raise ValueError(f"The score budget must be positive. Received: {budget!r}")
    unit = learning_rate_sum(LinearWarmupDecay(1.0, total_steps, warmup_fraction), total_steps)
    return budget * score_std / unit


def check_rate_arguments(score_budget=None, learning_rate=None):
    """Refuses both given, or either one not a positive finite number."""
    if score_budget is not None and learning_rate is not None:
        raise ValueError("Give a score budget or a learning rate, not both: each sets the rate.")
    for name, value in (("score_budget", score_budget), ("learning_rate", learning_rate)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"`{name}` must be a positive number. Received: {name}={value!r}")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"`{name}` must be a positive, finite number. Received: {name}={value!r}"
            )


def peak_learning_rate(total_steps, score_std, score_budget=None, learning_rate=None):
    """`(peak learning rate, B)` of the paper's schedule, given one of them.

    Args:
        total_steps: the run's number of steps.
        score_std: the std of the initial scores (`score_std(model)`).
        score_budget: the budget B; `DEFAULT_BUDGET` (0.47) if neither is given.
        learning_rate: the peak learning rate, instead of `score_budget`.
    """
    check_rate_arguments(score_budget, learning_rate)
    if learning_rate is None:
        score_budget = DEFAULT_BUDGET if score_budget is None else score_budget
        return learning_rate_for_budget(
            score_budget, total_steps, score_std=score_std
        ), score_budget
    schedule = LinearWarmupDecay(learning_rate, total_steps)
    return learning_rate, budget(schedule, total_steps, score_std)


def score_std(model):
    """The pooled std of a wrapped model's scores: B's denominator right after `wrap`."""
    scores = [values.reshape(-1) for values in scores_of(model).values()]
    if not scores:
        raise ValueError("The model has no masked layers: wrap it with `keras_mft.wrap` first.")
    return float(np.std(np.concatenate(scores), dtype="float64"))


def warn_if_small(budget, stacklevel=2):
    """Warns that a run with `budget` below 0.05 will hardly change the masks."""
    if budget < SMALL_BUDGET:
        warnings.warn(
            f"This run's score budget is B = {budget:.3g}: the scores can move at most "
            f"{budget:.3g} times their initial spread, so the masks will stay close to "
            "their initial ones. Raise the budget (more steps or a larger learning rate; "
            "`keras-mft train --score-budget`, `learning_rate_for_budget`): the paper's "
            f"runs had B = 0.23 to 0.47.",
            stacklevel=stacklevel + 1,
        )
