"""Peak memory and step time of the demo's training step, with and without
gradient checkpointing, on the active backend.

The demo (`keras-mft demo`) trains SmolLM2-135M-Instruct's masks over blocks
4-7 on batches of 4 x 512 tokens. Each arm runs in a fresh Python process:
it loads the model, wraps it, runs `--warmup` train steps (compilation) and
`--steps` timed ones, with the decoder blocks checkpointed
(`keras_mft.gradient_checkpointing`) or not, and reports the process's peak
resident memory (`ru_maxrss`: the model, the step and everything else), the
same before the first step (the floor: the model loaded and wrapped), and the
median step time. The two arms are measured side by side, one after the
other, in one run.

    KERAS_BACKEND=jax python benchmarks/checkpointing.py [--model smollm2|tiny] \
        [--sequence-length 512] [--steps 2] [--json FILE]
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import arms
import keras

import keras_mft

ARMS = ("mft", "mft_checkpointed")


def run_arm(model_name, arm, sequence_length, warmup, steps):
    """In this process: the peak resident memory and the median step time."""
    model = arms.build_model(model_name)
    x, y, sample_weight = arms.batch(model.backbone.vocabulary_size, 4, sequence_length)
    arms.prepare(model, "mft", arms.MODELS[model_name]["band"])
    loaded = arms.peak_rss_bytes()  # the floor: the model loaded, wrapped and compiled
    checkpointed = keras_mft.gradient_checkpointing(model)
    with checkpointed if arm == "mft_checkpointed" else contextlib.nullcontext():
        seconds = arms.median_seconds(
            lambda: model.train_on_batch(x, y, sample_weight=sample_weight), warmup, steps
        )
    return {
        "arm": arm,
        "loaded_bytes": loaded,
        "peak_bytes": arms.peak_rss_bytes(),
        "seconds": seconds,
    }


def measure(model_name, sequence_length, warmup, steps):
    results = {}
    for arm in ARMS:
        flags = ["--model", model_name, "--sequence-length", str(sequence_length)]
        flags += ["--warmup", str(warmup), "--steps", str(steps), "--child", arm]
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, *flags], capture_output=True, text=True, env=os.environ
        )
        if child.returncode != 0:
            raise RuntimeError(f"The {arm} arm failed:\n{child.stderr[-3000:]}")
        results[arm] = json.loads(child.stdout.strip().splitlines()[-1])
        results[arm]["process_seconds"] = time.perf_counter() - start
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = run_arm(args.model, args.child, args.sequence_length, args.warmup, args.steps)
        print(json.dumps(row))
        return
    backend = keras.backend.backend()
    print(f"{args.model}, batch 4 x {args.sequence_length} tokens, on {backend}", flush=True)
    results = measure(args.model, args.sequence_length, args.warmup, args.steps)
    plain, checkpointed = results["mft"], results["mft_checkpointed"]
    rows = [
        [
            backend,
            arm,
            f"{results[arm]['loaded_bytes'] / 2**30:.2f}",
            f"{results[arm]['peak_bytes'] / 2**30:.2f}",
            f"{results[arm]['seconds']:.2f}",
        ]
        for arm in ARMS
    ]
    header = ["backend", "arm", "peak before training (GiB)", "peak (GiB)", "step (s)"]
    print(arms.markdown_table(header, rows))
    print(
        f"With checkpointing: {checkpointed['peak_bytes'] / plain['peak_bytes']:.2f} x the "
        f"memory, {checkpointed['seconds'] / plain['seconds']:.2f} x the step time."
    )
    if args.json:
        row = {"backend": backend, "model": args.model, "sequence_length": args.sequence_length}
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump([{**row, **results[arm]} for arm in ARMS], file, indent=2)


if __name__ == "__main__":
    main()
