"""Peak memory that MFT adds per masked weight during training, on the active backend.

Each arm runs in a fresh Python process: it builds the model, notes its
resident memory, prepares the arm (for MFT: adds the scores), runs `--steps`
train steps and reports the peak resident memory (`ru_maxrss`) above that
note. The reference arm, `norms`, trains only the band's RMS-norm scales: it
runs the same forward and backward pass through the band with no weight-sized
gradient, so

    (MFT's peak - the reference's peak) / masked weights

is what MFT costs per masked weight: its scores, their gradient, the
optimizer's slots and every temporary, sort-like buffers included. The budget
is 16 bytes: float32 scores + gradient + Adam's two moments. FFT of the band is
shown beside it for comparison.

By default the model is one LLaMA-7B decoder block (202 M masked weights), so
that the difference stands far above the noise of a process's memory.
`--dtype bfloat16` builds the model in bfloat16 (the scores stay float32):
its frozen weights, activations and their gradients take half the memory,
and what MFT adds per masked weight should not grow.

    KERAS_BACKEND=jax python benchmarks/memory.py [--model llama7b_slice] \
        [--dtype bfloat16] [--json FILE]
"""

import argparse
import json
import os
import subprocess
import sys

import arms
import keras

BUDGET_BYTES = 16
MEMORY_ARMS = ("norms", "mft", "fft_band")
DTYPES = ("float32", "bfloat16")


def band_for(model_name, num_layers):
    """Every block when the number of blocks is chosen, else the model's band."""
    return arms.MODELS[model_name]["band"] if num_layers is None else f"0:{num_layers}"


def run_arm(model_name, arm, num_layers, steps, dtype):
    """In this process: the resident memory before training and the peak during it."""
    keras.config.set_dtype_policy(dtype)  # every layer built from here on
    settings = arms.MODELS[model_name]
    band = band_for(model_name, num_layers)
    model = arms.build_model(model_name, num_layers)
    x, y, sample_weight = arms.batch(
        model.backbone.vocabulary_size, settings["batch_size"], settings["sequence_length"]
    )
    before = arms.current_rss_bytes()
    arms.prepare(model, arm, band)
    for _ in range(steps):
        model.train_on_batch(x, y, sample_weight=sample_weight)
    return {
        "arm": arm,
        "masked_weights": arms.masked_count(model, band),
        "extra_peak_bytes": arms.peak_rss_bytes() - before,
    }


def measure(model_name, num_layers, steps, dtype):
    results = {}
    for arm in MEMORY_ARMS:
        layers = [] if num_layers is None else ["--num-layers", str(num_layers)]
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                model_name,
                *layers,
                "--steps",
                str(steps),
                "--dtype",
                dtype,
                "--child",
                arm,
            ],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        if child.returncode != 0:
            raise RuntimeError(f"The {arm} arm failed:\n{child.stderr[-3000:]}")
        results[arm] = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"  {arm}: {results[arm]['extra_peak_bytes'] / 2**20:,.0f} MiB above the built model",
            flush=True,
        )
    masked = results["mft"]["masked_weights"]
    reference = results["norms"]["extra_peak_bytes"]
    row = {
        "backend": keras.backend.backend(),
        "model": model_name,
        "dtype": dtype,
        "masked_weights": masked,
    }
    for arm in ("mft", "fft_band"):
        row[f"{arm}_bytes_per_weight"] = (results[arm]["extra_peak_bytes"] - reference) / masked
    row["raw"] = results
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(arms.MODELS), default="llama7b_slice")
    parser.add_argument(
        "--num-layers",
        type=int,
        help="decoder blocks of a random model, all of them masked "
        "(default: 1 for llama7b_slice, else the model's band)",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="the model's dtype (scores: float32)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", choices=MEMORY_ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_layers is None and args.model == "llama7b_slice":
        args.num_layers = 1
    if args.child:
        print(json.dumps(run_arm(args.model, args.child, args.num_layers, args.steps, args.dtype)))
        return
    print(
        f"{args.model} in {args.dtype} on {keras.backend.backend()}, "
        f"{args.steps} train steps per arm",
        flush=True,
    )
    row = measure(args.model, args.num_layers, args.steps, args.dtype)
    mft = row["mft_bytes_per_weight"]
    print(
        arms.markdown_table(
            [
                "backend",
                "model",
                "dtype",
                "masked weights",
                "MFT bytes / weight",
                "FFT band bytes / weight",
                "target <= 16",
            ],
            [
                [
                    row["backend"],
                    row["model"],
                    row["dtype"],
                    f"{row['masked_weights']:,}",
                    f"{mft:.1f}",
                    f"{row['fft_band_bytes_per_weight']:.1f}",
                    "met" if mft <= BUDGET_BYTES else "MISSED",
                ]
            ],
        )
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(row, file, indent=2)


if __name__ == "__main__":
    main()
