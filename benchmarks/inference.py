"""Inference speed of the original, the wrapped and the baked model, on the active backend.

Three copies of the same model are held at once: the original, the same model
wrapped for MFT (band and seed as in `train_step.py`), and a wrapped copy after
`keras_mft.bake`. Each is timed on two jobs, round-robin so that all three see
the same machine noise, and each round starts with the next variant: where a
call runs in the round changes its time (on this machine, every other logits
call took about 20% less, whichever model made it), so every variant takes
every place equally often (`--repeats` a multiple of 3):

- logits: `predict_on_batch` of a batch (KerasHub's compiled forward pass);
- generation: `generate` of `--new-tokens` greedy tokens after a prompt.

A wrapped model recomputes every mask at every call, so it is slower; the
baked model is a plain KerasHub model again, and should match the original
(target: ratio 1.00 +- 0.03).

    KERAS_BACKEND=jax python benchmarks/inference.py [--model smollm2] [--json FILE]
"""

import argparse
import json
import statistics
import time

import arms
import keras
import numpy as np

import keras_mft

VARIANTS = ("original", "wrapped", "baked")


def build_variants(model_name):
    band = arms.MODELS[model_name]["band"]
    original = arms.build_model(model_name)
    wrapped = keras_mft.wrap(arms.build_model(model_name), layers=band, seed=0)
    baked = keras_mft.bake(keras_mft.wrap(arms.build_model(model_name), layers=band, seed=0))
    for model in (original, wrapped, baked):
        model.compile(sampler="greedy")
    return {"original": original, "wrapped": wrapped, "baked": baked}


def jobs(model, model_name, prompt_length, new_tokens):
    settings = arms.MODELS[model_name]
    x, _, _ = arms.batch(
        model.backbone.vocabulary_size, settings["batch_size"], settings["sequence_length"]
    )
    length = prompt_length + new_tokens
    prompt = {
        "token_ids": np.pad(x["token_ids"][:1, :prompt_length], [(0, 0), (0, new_tokens)]),
        "padding_mask": np.arange(length)[None, :] < prompt_length,
    }
    return {
        "logits": lambda: model.predict_on_batch(x),
        "generation": lambda: model.generate(prompt, max_length=length, stop_token_ids=None),
    }


def measure(model_name, prompt_length, new_tokens, repeats):
    models = build_variants(model_name)
    work = {
        name: jobs(model, model_name, prompt_length, new_tokens) for name, model in models.items()
    }
    times = {(name, job): [] for name in VARIANTS for job in ("logits", "generation")}
    for round_index in range(repeats + 1):  # round 0 warms up (compilation)
        first = round_index % len(VARIANTS)
        order = VARIANTS[first:] + VARIANTS[:first]
        for job in ("logits", "generation"):
            for name in order:
                start = time.perf_counter()
                work[name][job]()
                if round_index:
                    times[name, job].append(time.perf_counter() - start)
    rows = []
    for job in ("logits", "generation"):
        original = statistics.median(times["original", job])
        for name in VARIANTS:
            seconds = statistics.median(times[name, job])
            rows.append(
                {
                    "backend": keras.backend.backend(),
                    "model": model_name,
                    "job": job,
                    "variant": name,
                    "seconds": seconds,
                    "vs_original": seconds / original,
                }
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(arms.MODELS), default="smollm2")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    print(f"{args.model} on {keras.backend.backend()}: median of {args.repeats} rounds", flush=True)
    rows = measure(args.model, args.prompt_length, args.new_tokens, args.repeats)
    print(
        arms.markdown_table(
            [
                "backend",
                "model",
                "job",
                "variant",
                "seconds",
                "/ original",
                "baked target 1.00 +- 0.03",
            ],
            [
                [
                    row["backend"],
                    row["model"],
                    row["job"],
                    row["variant"],
                    f"{row['seconds']:.3f}",
                    f"{row['vs_original']:.2f}",
                    ("met" if abs(row["vs_original"] - 1) <= 0.03 else "MISSED")
                    if row["variant"] == "baked"
                    else "",
                ]
                for row in rows
            ],
        )
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
