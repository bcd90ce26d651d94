"""The gradient of a scalar function with respect to one Keras variable.

Keras has no backend-neutral gradient op (its trainers call each backend's
own), so this test helper does the same: one branch per backend.
"""

import keras


def gradient(loss_fn, variable):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def stateless_loss(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return loss_fn()

        return jax.grad(stateless_loss)(variable.value)
    if backend == "torch":
        value = variable.value
        value.grad = None
        loss_fn().backward()
        return value.grad
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, variable.value)
    raise ValueError(f"No gradient helper for backend {backend!r}.")
