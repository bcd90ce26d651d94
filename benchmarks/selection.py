"""Time of mask selection for LLaMA-7B-sized matrices, on the active backend.

Compares keras-mft's selection (`keras_mft.mask.keep_mask`: radix select over
the bit patterns of |score|) with a full sort and with `ops.top_k` of the
same scores, each through `keras.ops` and compiled as Keras compiles a train
step on this machine (`jax.jit`; `tf.function`, with XLA only where Keras
uses it, which it does not on a machine without an accelerator; eager
PyTorch), and prints a table. Each method is run once to warm up
(compilation, caches) and then `--repeats` times; the table shows the median.

    KERAS_BACKEND=jax python benchmarks/selection.py [--sizes 4096x4096,4096x11008] [--json FILE]
"""

import argparse
import functools
import json
import statistics
import time

import keras
import numpy as np
from keras import ops

from keras_mft.mask import keep_mask
from keras_mft.mask import num_removed


@functools.cache
def keras_uses_xla():
    """Whether Keras compiles a model's train step with XLA on this machine."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile()
    return model.jit_compile


def compiled(function):
    """`function` compiled the way Keras compiles a train step on this backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=keras_uses_xla())
    return function


def wait(result):
    """Returns once `result` is computed, without copying it off a GPU
    (TensorFlow's is copied into numpy: it was not run on a GPU)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(result)
    elif backend == "torch":
        import torch

        if result.is_cuda:
            torch.cuda.synchronize()
    else:
        ops.convert_to_numpy(result)


def seconds(function, repeats):
    wait(function())  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        wait(function())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(shape, sparsity, repeats):
    scores = np.random.default_rng(0).normal(0, 0.02, shape).astype("float32")
    scores = ops.convert_to_tensor(scores)
    removed = num_removed(int(np.prod(shape)), sparsity)
    methods = {
        "keras-mft": compiled(lambda s: keep_mask(s, removed)),
        "sort": compiled(lambda s: ops.sort(ops.reshape(ops.abs(s), (-1,)))),
        "top_k": compiled(
            lambda s: ops.top_k(-ops.reshape(ops.abs(s), (-1,)), removed, sorted=False)[1]
        ),
    }
    return {
        name: seconds(lambda method=method: method(scores), repeats)
        for name, method in methods.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4096x4096,4096x11008")
    parser.add_argument("--sparsity", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    backend = keras.backend.backend()
    rows = []
    print(
        "| backend | matrix | keras-mft (s) | sort (s) | top_k (s) | sort / keras-mft | top_k / keras-mft |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        shape = tuple(int(n) for n in size.split("x"))
        result = measure(shape, args.sparsity, args.repeats)
        rows.append({"backend": backend, "shape": list(shape), **result})
        print(
            f"| {backend} | {size} | {result['keras-mft']:.3f} | {result['sort']:.3f} | "
            f"{result['top_k']:.3f} | {result['sort'] / result['keras-mft']:.1f}x | "
            f"{result['top_k'] / result['keras-mft']:.1f}x |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
