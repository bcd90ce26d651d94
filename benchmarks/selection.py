"""Time of mask selection for LLaMA-7B-sized matrices, on the active backend.

Times keras-mft's selection (`keras_mft.masking.mask.select`) both ways it can run,
on scores that one AdamW step at the paper's rate moved (every score by 2e-5
either way; std 0.02): "incremental" starts from last step's threshold and
counts only inside its high bin (what a train step does on a GPU), "radix" is
the full radix select over the bit patterns of |score| (what it does on a CPU,
and on a GPU at the first step or when the threshold left its bin). Next to
them: a full sort and `ops.top_k` of the same scores. Each goes through
`keras.ops`, compiled as Keras compiles a train step on this machine
(`jax.jit`; `tf.function`, with XLA only where Keras uses it, which it does
not on a machine without an accelerator; eager PyTorch). Each method is run
once to warm up (compilation, caches) and then `--repeats` times; the table
shows the median, and "keras-mft" in the JSON is the way this device uses.

    KERAS_BACKEND=jax python benchmarks/selection.py [--sizes 4096x4096,4096x11008] [--json FILE]
"""

import argparse
import functools
import json
import statistics
import time
from unittest import mock

import keras
import numpy as np
from keras import ops

from keras_mft.masking import mask
from keras_mft.masking.mask import num_removed
from keras_mft.masking.mask import select


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
    rng = np.random.default_rng(0)
    before = rng.normal(0, 0.02, shape).astype("float32")
    after = ops.convert_to_tensor(before + 2e-5 * rng.choice([-1, 1], shape).astype("float32"))
    removed = num_removed(int(np.prod(shape)), sparsity)
    last = ops.convert_to_tensor(select(ops.convert_to_tensor(before), removed)[1], "int32")
    result, masks = {}, {}
    for name, incremental in (("incremental", True), ("radix", False)):
        # Both ways on any device: the choice is made when the step is traced.
        with mock.patch.object(mask, "starts_from_last_threshold", lambda keys, i=incremental: i):
            method = compiled(lambda s, t: select(s, removed, t)[0])
            result[name] = seconds(lambda m=method: m(after, last), repeats)
            masks[name] = ops.convert_to_numpy(method(after, last))
    sort = compiled(lambda s: ops.sort(ops.reshape(ops.abs(s), (-1,))))
    result["sort"] = seconds(lambda: sort(after), repeats)
    top_k = compiled(lambda s: ops.top_k(-ops.reshape(ops.abs(s), (-1,)), removed, sorted=False)[1])
    result["top_k"] = seconds(lambda: top_k(after), repeats)
    result["used"] = "incremental" if mask.starts_from_last_threshold(after) else "radix"
    result["keras-mft"] = result[result["used"]]
    # Whether the step's threshold stayed in last step's high bin (the usual
    # case), and that both ways give one mask.
    threshold = select(after, removed)[1]
    result["same_bin"] = bool(int(threshold) >> 16 == int(last) >> 16)
    result["same_mask"] = bool(np.array_equal(masks["incremental"], masks["radix"]))
    return result


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
        "| backend | matrix | incremental (s) | radix (s) | sort (s) | top_k (s) "
        "| radix / incremental | sort / keras-mft | top_k / keras-mft | used here |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in args.sizes.split(","):
        shape = tuple(int(n) for n in size.split("x"))
        result = measure(shape, args.sparsity, args.repeats)
        rows.append({"backend": backend, "shape": list(shape), **result})
        ours, incremental = result["keras-mft"], result["incremental"]
        print(
            f"| {backend} | {size} | {incremental:.4f} | {result['radix']:.4f} | "
            f"{result['sort']:.4f} | {result['top_k']:.4f} | {result['radix'] / incremental:.1f}x | "
            f"{result['sort'] / ours:.1f}x | {result['top_k'] / ours:.1f}x | {result['used']} |",
            flush=True,
        )
        if not result["same_mask"]:
            raise SystemExit(f"The {size} masks differ: starting from the last threshold is wrong.")
        if not result["same_bin"]:
            print(f"(the {size} threshold left its high bin: incremental timed a miss)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
