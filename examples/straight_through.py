"""
Title: Inside the straight-through estimator
Author: keras-mft
Date created: 2026/12/04
Last modified: 2026/12/04
Description: Scores, masks and gradients of one small masked layer, step by
step, checked against numpy.
Accelerator: None

A binary mask has no useful gradient: moving a score a little does not change
which weights are kept. MFT trains the scores anyway with a straight-through
estimator: the forward pass uses the hard 0/1 mask, and the backward pass
pretends the mask were `|score|`. This guide builds one masked layer with 12
weights, computes every quantity by hand in numpy, and checks that Keras
computes the same on every backend. It runs in seconds.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "torch", "tensorflow"

import keras
import numpy as np

import keras_mft

np.set_printoptions(precision=4, suppress=True)
rng = np.random.default_rng(0)

"""
## A layer with 12 weights, 3 of them removed

`MaskedDense` is a `keras.layers.Dense` whose kernel `W` is frozen and
multiplied by a mask `m`. With `sparsity=0.25`, the mask removes
`floor(0.25 * 12) = 3` entries: those whose score has the smallest absolute
value. The scores are the only trainable variable.
"""

W = rng.normal(size=(4, 3)).astype("float32")
scores = rng.normal(0.0, 0.02, size=(4, 3)).astype("float32")

layer = keras_mft.MaskedDense(
    3,
    use_bias=False,
    sparsity=0.25,
    kernel_initializer=keras.initializers.Constant(W),
    scores_initializer=keras.initializers.Constant(scores),
)
layer.build((None, 4))
print("trainable:", [v.name for v in layer.trainable_variables])


def mask_by_hand(scores, removed):
    """1 for the entries with the largest |score|, 0 for the `removed` smallest."""
    order = np.argsort(np.abs(scores), axis=None, kind="stable")
    mask = np.ones(scores.size, "float32")
    mask[order[:removed]] = 0.0
    return mask.reshape(scores.shape)


m = mask_by_hand(scores, 3)
print("|scores|:\n", np.abs(scores))
print("mask (numpy):\n", m)
print("mask (keras-mft):\n", keras.ops.convert_to_numpy(layer.hard_mask()))
assert np.array_equal(m, keras.ops.convert_to_numpy(layer.hard_mask()))

"""
## Forward: y = x @ (W * m)

The layer's `kernel` property returns `W * m`, so Keras' own `Dense.call`
computes the masked product.
"""

x = rng.normal(size=(5, 4)).astype("float32")
target = rng.normal(size=(5, 3)).astype("float32")
y = x @ (W * m)
y_keras = keras.ops.convert_to_numpy(layer(x))
print("forward, largest difference from numpy:", np.max(np.abs(y - y_keras)))
np.testing.assert_allclose(y_keras, y, rtol=1e-5, atol=1e-6)

"""
## Backward, by hand

With the mean squared error `L = mean((y - target)^2)`:

- `dL/dy = 2 (y - target) / y.size`
- `dL/d(W*m) = x^T @ dL/dy`, the gradient an unmasked layer would give its kernel
- `dL/dm = W * dL/d(W*m)`
- the straight-through step: `dL/ds = sign(s) * dL/dm`, as if `m` were `|s|`.

Every entry gets a gradient, removed ones included: that is how a removed
weight can come back.
"""

grad_y = 2.0 * (y - target) / y.size
grad_effective_kernel = x.T @ grad_y
grad_mask = W * grad_effective_kernel
grad_scores = np.sign(scores) * grad_mask
print("dL/ds (numpy):\n", grad_scores)
print("gradient of the removed entries:", grad_scores[m == 0])

"""
## Backward, by Keras

One step of plain gradient descent with learning rate 1 changes each score by
minus its gradient, so the gradient Keras computed is `before - after`. This
works the same way on JAX, PyTorch and TensorFlow.
"""

model = keras.Sequential([keras.Input((4,)), layer])
model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
before = keras.ops.convert_to_numpy(layer.scores)
model.train_on_batch(x, target)
grad_keras = before - keras.ops.convert_to_numpy(layer.scores)
print("dL/ds (Keras):\n", grad_keras)
print("largest difference from numpy:", np.max(np.abs(grad_keras - grad_scores)))
np.testing.assert_allclose(grad_keras, grad_scores, rtol=1e-4, atol=1e-7)

"""
## Training: scores move, masks flip

The scores are tiny (standard deviation 0.02), so a few steps of Adam are
enough to reorder them. Each step recomputes the mask from the current
scores. The straight-through gradient is an estimate (the true gradient of a
0/1 mask is zero almost everywhere), so the loss does not fall at every step,
but it falls overall as the mask swaps which 3 weights are removed.
"""

layer.scores.assign(scores)
model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.002), loss="mse")
previous = mask_by_hand(scores, 3)
print(f"start    loss {model.evaluate(x, target, verbose=0):.4f}")
for step in range(1, 16):
    model.train_on_batch(x, target)
    loss = model.evaluate(x, target, verbose=0)
    mask = keras.ops.convert_to_numpy(layer.hard_mask())
    removed = [tuple(int(i) for i in index) for index in np.argwhere(mask == 0)]
    flips = int(np.sum(mask != previous))
    print(f"step {step:2d}  loss {loss:.4f}  removed {removed}  flipped {flips}")
    previous = mask

"""
## What to remember

- Forward: exactly `floor(sparsity * size)` weights removed, by the smallest
  `|score|`.
- Backward: `dL/ds = sign(s) * W * dL/d(W*m)`, for kept and removed entries
  alike.
- Only the scores train; `keras_mft.bake` finally multiplies the mask into
  `W` and drops the scores.
"""
