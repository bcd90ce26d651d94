"""The paper's optimiser and loss, computed as its PyTorch run computes them:
`torch.optim.AdamW` (weight decay 0), Hugging Face's linear warm-up and decay,
gradients clipped to a global norm of 1.0, a loss averaged over the responses.
"""

import keras
from keras import ops

from keras_mft.training.schedule import LinearWarmupDecay

# The paper's peak learning rate for MFT (and for its full fine-tuning).
LEARNING_RATE = 2e-5
# The paper's run clips the gradients' global norm at 1.0 (DeepSpeed's "auto").
GLOBAL_CLIPNORM = 1.0


@keras.saving.register_keras_serializable(package="keras_mft")
class PaperAdamW(keras.optimizers.AdamW):
    """AdamW as `torch.optim.AdamW` computes it: epsilon after bias correction.

    Each step, for a gradient `g` at step `t` (counted from 1):

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        variable -= learning_rate / (1 - beta_1**t) * m
                    / (sqrt(v) / sqrt(1 - beta_2**t) + epsilon)

    Keras' `AdamW` divides by `sqrt(v) + epsilon` instead, which in these
    terms is an epsilon of `epsilon / sqrt(1 - beta_2**t)`: 3.2e-6 at step 1
    for Keras' 1e-7, larger than most of MFT's score gradients. Weight decay
    is decoupled, as in both libraries.

    Args:
        learning_rate: a float or a schedule such as `LinearWarmupDecay`.
        weight_decay: decoupled weight decay; the paper uses 0.
        epsilon: added to the bias-corrected `sqrt(v)`, as in PyTorch (1e-8).
        **kwargs: Keras' `AdamW` arguments (`beta_1` 0.9 and `beta_2` 0.999,
            as PyTorch's defaults; `global_clipnorm`, ...).

    Example:

    ```python
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2")
    optimizer = keras_mft.PaperAdamW(2e-5, global_clipnorm=1.0)
    model.compile(optimizer=optimizer, loss=keras_mft.paper_loss(), sampler=model.sampler)
    ```
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = LEARNING_RATE,
        weight_decay: float = 0.0,
        epsilon: float = 1e-8,
        **kwargs,
    ):
        if kwargs.pop("amsgrad", False):
            raise ValueError("PaperAdamW does not implement AMSGrad. Remove `amsgrad=True`.")
        kwargs.setdefault("name", "paper_adamw")
        super().__init__(learning_rate, weight_decay, epsilon=epsilon, **kwargs)

    def _get_current_learning_rate(self):
        # Keras hands a schedule the count of batches; with gradient
        # accumulation the paper's schedule (like Hugging Face's) counts updates.
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign(
            m, ops.add(ops.multiply(m, self.beta_1), ops.multiply(gradient, 1 - self.beta_1))
        )
        self.assign(
            v,
            ops.add(
                ops.multiply(v, self.beta_2), ops.multiply(ops.square(gradient), 1 - self.beta_2)
            ),
        )
        bias_correction_1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias_correction_2 = 1 - ops.power(ops.cast(self.beta_2, dtype), step)
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_correction_2)), self.epsilon)
        step_size = ops.divide(learning_rate, bias_correction_1)
        self.assign_sub(variable, ops.divide(ops.multiply(m, step_size), denominator))


def paper_optimizer(
    total_steps,
    learning_rate=LEARNING_RATE,
    warmup_fraction=0.03,
    global_clipnorm=GLOBAL_CLIPNORM,
    gradient_accumulation_steps=None,
):
    """The paper's optimiser: `PaperAdamW` with `LinearWarmupDecay`, clipped.

    Args:
        total_steps: the number of optimizer updates of the run (the schedule
            reaches 0 there). With gradient accumulation, the batches divided
            by `gradient_accumulation_steps`.
        learning_rate: the peak learning rate. To choose it from a score
            budget instead, see `keras_mft.score_budget.learning_rate_for_budget`.
        warmup_fraction: the share of the steps spent warming up.
        global_clipnorm: the gradients' global norm is clipped to this; None
            turns clipping off.
        gradient_accumulation_steps: None, or an int >= 2: each update then
            averages the gradients of that many batches (Keras' option), so
            a large batch fits in memory.
    """
    schedule = LinearWarmupDecay(learning_rate, total_steps, warmup_fraction)
    return PaperAdamW(
        schedule,
        global_clipnorm=global_clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )


def paper_loss() -> keras.losses.Loss:
    """Cross-entropy averaged over the tokens with weight 1 (the responses).

    KerasHub's default `CausalLM` loss divides the weighted sum by every
    position of the batch, prompt and padding included; Hugging Face and TRL
    (and the paper's run) divide by the number of labelled tokens, so the loss
    and its gradients do not shrink with the share of prompt tokens.
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )


def compile_like_paper(model, optimizer=None):
    """Compiles a `CausalLM` with `optimizer` and `paper_loss()`, keeping its sampler.

    The default optimizer is `PaperAdamW` at a constant 2e-5, clipped as in
    the paper's run.
    """
    optimizer = optimizer or PaperAdamW(LEARNING_RATE, global_clipnorm=GLOBAL_CLIPNORM)
    model.compile(optimizer=optimizer, loss=paper_loss(), sampler=model.sampler)
    # Keras on TensorFlow would create the optimizer's variables while tracing
    # the first training step, and then trace it a second time without them:
    # creating them now saves that trace, which grows with the model's blocks.
    if model.built and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
