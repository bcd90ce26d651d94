"""The paper's optimiser, schedule, loss and score budget, against references.

The reference run is written here in PyTorch, as the paper's code runs it:
`torch.optim.AdamW`, Hugging Face's linear schedule through `LambdaLR`,
`clip_grad_norm_`, and the authors' mask (`GetSubnetSparsity`, re-typed,
removing floor(0.1 * n) entries as keras-mft does).
"""

import warnings

import keras
import numpy as np
import pytest
import torch

import keras_mft
from keras_mft import score_budget as budgets
from keras_mft.training.optimizer import paper_optimizer
from tests.shared.models import tiny_llama
from tests.shared.models import to_numpy

STEPS, WARMUP_FRACTION, LEARNING_RATE = 20, 0.1, 1e-3
IN, OUT, ROWS = 24, 32, 16


def hugging_face_lambda(total_steps, warmup_fraction):
    """`get_linear_schedule_with_warmup`'s factor, re-typed from transformers."""
    warmup = int(total_steps * warmup_fraction)

    def factor(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup)))

    return factor


class GetSubnet(torch.autograd.Function):
    """The authors' `GetSubnetSparsity`: 0 for the `removed` smallest scores."""

    @staticmethod
    def forward(ctx, scores, removed):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        flat_out = out.flatten()
        flat_out[idx[:removed]] = 0
        flat_out[idx[removed:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


def problem(scale):
    """A kernel, initial scores, inputs and targets; the loss is scaled by `scale`."""
    rng = np.random.default_rng(0)
    kernel = (0.2 * rng.standard_normal((IN, OUT))).astype("float32")
    scores = (0.02 * rng.standard_normal((IN, OUT))).astype("float32")
    x = rng.standard_normal((ROWS, IN)).astype("float32")
    target = rng.standard_normal((ROWS, OUT)).astype("float32")
    return kernel, scores, x, target, scale


def torch_masks(kernel, scores, x, target, scale, accumulation=1):
    """The mask after each step of the paper's run, in PyTorch; each update
    averages the gradients of `accumulation` batches, as Hugging Face's does."""
    weight, x, target = torch.tensor(kernel), torch.tensor(x), torch.tensor(target)
    scores = torch.nn.Parameter(torch.tensor(scores))
    removed = int(0.1 * scores.numel())
    optimizer = torch.optim.AdamW(
        [scores], lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, hugging_face_lambda(STEPS, WARMUP_FRACTION)
    )
    masks = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        for rows, targets in zip(x.chunk(accumulation), target.chunk(accumulation)):
            mask = GetSubnet.apply(scores.abs(), removed)
            loss = scale * 0.5 * ((rows @ (weight * mask) - targets) ** 2).sum()
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_([scores], 1.0)
        optimizer.step()
        schedule.step()
        masks.append(GetSubnet.apply(scores.detach().abs(), removed).numpy() > 0)
    return masks


class RecordMasks(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        (mask,) = keras_mft.masks_of(self.model).values()
        self.masks.append(mask)


def keras_masks(kernel, scores, x, target, scale, optimizer=None, batch_size=ROWS):
    """The same run with keras-mft: a `MaskedDense` and `paper_optimizer`; the mask
    after each batch."""
    inputs = keras.Input((IN,))
    layer = keras_mft.MaskedDense(
        OUT,
        use_bias=False,
        sparsity=0.1,
        kernel_initializer=keras.initializers.Constant(kernel),
        scores_initializer=keras.initializers.Constant(scores),
    )
    model = keras.Model(inputs, layer(inputs))
    model.compile(
        optimizer=optimizer or paper_optimizer(STEPS, LEARNING_RATE, WARMUP_FRACTION),
        loss=lambda y, y_pred: scale * 0.5 * keras.ops.sum(keras.ops.square(y_pred - y)),
    )
    recorder = RecordMasks()
    model.fit(
        x,
        target,
        batch_size=batch_size,
        epochs=STEPS,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    return recorder.masks


# Score gradients of about 1e-6 (MFT's on SmolLM2), 1e-9 (under PyTorch's
# epsilon), and large ones that the global norm of 1.0 clips.
@pytest.mark.parametrize("scale", [1e-6, 1e-9, 10.0])
def test_the_masks_of_the_paper_run_step_for_step(scale):
    kernel, scores, x, target, scale = problem(scale)
    reference = torch_masks(kernel, scores, x, target, scale)
    masks = keras_masks(kernel, scores, x, target, scale)
    for step, (mask, expected) in enumerate(zip(masks, reference, strict=True)):
        assert np.array_equal(mask, expected), f"step {step}: {np.sum(mask != expected)} differ"
    # The run moves the masks, so the comparison can fail.
    assert np.mean(reference[-1] != reference[0]) > 0.02


def test_keras_adamw_would_take_other_masks():
    """Keras' own AdamW adds its epsilon before bias correction: other masks."""
    kernel, scores, x, target, scale = problem(1e-6)
    reference = torch_masks(kernel, scores, x, target, scale)
    schedule = keras_mft.LinearWarmupDecay(LEARNING_RATE, STEPS, WARMUP_FRACTION)
    keras_adamw = keras.optimizers.AdamW(schedule, weight_decay=0.0, global_clipnorm=1.0)
    masks = keras_masks(kernel, scores, x, target, scale, optimizer=keras_adamw)
    assert any(not np.array_equal(a, b) for a, b in zip(masks, reference))


def test_schedule_is_hugging_face_step_for_step():
    for total, fraction in [(100, 0.1), (938, 0.03), (19, 0.03), (7, 0.5)]:
        schedule = keras_mft.LinearWarmupDecay(2.0, total, fraction)
        values = to_numpy(schedule(keras.ops.arange(total + 2)))
        factor = hugging_face_lambda(total, fraction)
        expected = [2.0 * factor(step) for step in range(total + 2)]
        np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
    restored = keras_mft.LinearWarmupDecay.from_config(schedule.get_config())
    assert float(to_numpy(restored(3))) == pytest.approx(float(values[3]))


def test_paper_adamw_round_trips_its_config():
    optimizer = paper_optimizer(938)
    config = keras.optimizers.serialize(optimizer)
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, keras_mft.PaperAdamW)
    assert restored.epsilon == 1e-8 and restored.global_clipnorm == 1.0
    assert restored.weight_decay == 0.0
    with pytest.raises(ValueError, match="AMSGrad"):
        keras_mft.PaperAdamW(amsgrad=True)


def test_wrapped_model_reports_the_mean_over_response_tokens():
    model = keras_mft.wrap(tiny_llama(), layers="0:1", sparsity=0.1, seed=0)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 64, (4, 9))
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((4, 8), bool)}
    y = tokens[:, 1:]
    weights = (rng.random((4, 8)) < 0.3).astype("float32")
    weights[0, 0] = 1.0
    logits = to_numpy(model(x)).astype("float64")
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    expected = np.sum(token_losses * weights) / np.sum(weights)

    evaluated = model.evaluate(
        x, y, sample_weight=weights, batch_size=4, verbose=0, return_dict=True
    )
    assert evaluated["loss"] == pytest.approx(expected, rel=1e-5)
    held_out = keras_mft.evaluation.response_loss(model, (x, y, weights), batch_size=4)
    assert held_out["loss"] == pytest.approx(expected, rel=1e-5)
    # `fit` reports the loss before its one update.
    history = model.fit(x, y, sample_weight=weights, batch_size=4, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert isinstance(model.optimizer, keras_mft.PaperAdamW)


def test_score_budget_of_the_paper_runs():
    # 2 epochs of batches of 128: math 60,000 examples, instruction following
    # 56,000, code 30,000.
    for examples, budget in [(60_000, 0.47), (56_000, 0.44), (30_000, 0.23)]:
        steps = 2 * -(-examples // 128)
        schedule = keras_mft.LinearWarmupDecay(2e-5, steps)
        assert budgets.budget(schedule, steps) == pytest.approx(budget, abs=0.006)
        assert budgets.budget(schedule, steps) == pytest.approx(2e-5 * steps / 2 / 0.02, rel=1e-6)
    assert budgets.budget(1e-3, 10, score_std=0.5) == pytest.approx(0.02)
    # Without warm-up, the first step already has the peak: (N + 1) / 2.
    assert budgets.learning_rate_sum(keras_mft.LinearWarmupDecay(1.0, 19), 19) == pytest.approx(
        10.0
    )


def test_learning_rate_for_budget_inverts_score_budget():
    for steps, budget, spread in [(19, 0.47, 0.02), (938, 0.47, 0.02), (40, 1.5, 0.013)]:
        peak = budgets.learning_rate_for_budget(budget, steps, score_std=spread)
        schedule = keras_mft.LinearWarmupDecay(peak, steps)
        assert budgets.budget(schedule, steps, spread) == pytest.approx(budget, rel=1e-6)
    assert budgets.learning_rate_for_budget(0.469, 938) == pytest.approx(2e-5, rel=1e-3)
    assert budgets.peak_learning_rate(938, 0.02, learning_rate=2e-5)[1] == pytest.approx(0.469)
    assert budgets.peak_learning_rate(938, 0.02) == pytest.approx((2e-5 * 0.47 / 0.469, 0.47))
    with pytest.raises(ValueError, match="not both"):
        budgets.peak_learning_rate(938, 0.02, score_budget=0.4, learning_rate=1e-5)
    with pytest.raises(ValueError, match="positive"):
        budgets.learning_rate_for_budget(0.0, 10)


def test_a_small_budget_warns():
    with pytest.warns(UserWarning, match=r"B = 0\.0141.*at most 0\.0141 times"):
        budgets.warn_if_small(0.0141)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        budgets.warn_if_small(0.05)


def test_gradient_accumulation_is_hugging_face_step_for_step():
    """Each update averages two batches; the schedule counts updates, not batches."""
    kernel, scores, x, target, scale = problem(1e-6)
    reference = torch_masks(kernel, scores, x, target, scale, accumulation=2)
    optimizer = paper_optimizer(
        STEPS, LEARNING_RATE, WARMUP_FRACTION, gradient_accumulation_steps=2
    )
    masks = keras_masks(kernel, scores, x, target, scale, optimizer, batch_size=ROWS // 2)
    masks = masks[1::2]  # after the second batch of each update
    for step, (mask, expected) in enumerate(zip(masks, reference, strict=True)):
        assert np.array_equal(mask, expected), f"update {step}: {np.sum(mask != expected)} differ"
    assert np.mean(reference[-1] != reference[0]) > 0.02
