"""Train-step time of MFT next to full fine-tuning and LoRA, on the active backend.

Every arm (see `arms.py`) trains the same model on the same batch in this one
process, through Keras' own compiled train step (`train_on_batch`). Each arm
runs `--warmup` steps (compilation) and then `--steps` timed steps; the table
shows the median step and its ratio to FFT of the band's blocks, the reference
the targets name: MFT should cost at most 1.05x that, and less than full FFT.

    KERAS_BACKEND=jax python benchmarks/train_step.py --model smollm2 [--json FILE]

`--sequence-length` times longer batches than the model's default: MFT's
extra work (the selection and the masking) is the same for any batch, while
the matrix products grow with the tokens in the step.

`--process-per-arm` times each arm in a fresh child process instead, so
that no arm inherits the memory and caches an earlier arm left behind.
`--interleave` builds every arm's model at once and times their steps in
turn, one step of each arm per round, so that a change in the machine's speed
over the minutes of a run falls on every arm alike (it needs the memory of
all the arms together).

`--dtype bfloat16` stores and computes the model's weights in bfloat16 (Keras'
dtype policy); MFT's scores stay float32, as `keras_mft.wrap` keeps them.
"""

import argparse
import json
import statistics
import time

import arms
import keras


def prepared_step(model_name, arm, sequence_length):
    """`(model, step)`: `arm`'s model and a function running one train step."""
    settings = arms.MODELS[model_name]
    model = arms.prepare(arms.build_model(model_name), arm, settings["band"])
    x, y, sample_weight = arms.batch(
        model.backbone.vocabulary_size, settings["batch_size"], sequence_length
    )
    return model, lambda: model.train_on_batch(x, y, sample_weight=sample_weight)


def row_of(model_name, arm, model, sequence_length, seconds):
    return {
        "backend": keras.backend.backend(),
        "model": model_name,
        "arm": arm,
        "tokens": arms.MODELS[model_name]["batch_size"] * sequence_length,
        "dtype": keras.config.dtype_policy().name,
        "trainable": arms.trainable_count(model),
        "seconds": seconds,
    }


def time_arm(model_name, arm, warmup, steps, sequence_length):
    """One arm's row; its model is freed when this returns."""
    model, step = prepared_step(model_name, arm, sequence_length)
    seconds = arms.median_seconds(step, warmup, steps)
    return row_of(model_name, arm, model, sequence_length, seconds)


def time_interleaved(model_name, arm_names, warmup, steps, sequence_length):
    """The arms' rows, their steps timed in turn: one step of each per round."""
    prepared = {arm: prepared_step(model_name, arm, sequence_length) for arm in arm_names}
    times = {arm: [] for arm in arm_names}
    for round_index in range(warmup + steps):
        for arm, (_, step) in prepared.items():
            start = time.perf_counter()
            step()
            if round_index >= warmup:
                times[arm].append(time.perf_counter() - start)
    return [
        row_of(model_name, arm, model, sequence_length, statistics.median(times[arm]))
        for arm, (model, _) in prepared.items()
    ]


def measure(
    model_name,
    arm_names,
    warmup,
    steps,
    sequence_length,
    json_path=None,
    process_per_arm=False,
    interleave=False,
):
    """The arms' rows; with `json_path`, written there after every arm (all
    at once when interleaved), so that the arms already timed survive one
    that fails."""
    if interleave:
        rows = time_interleaved(model_name, arm_names, warmup, steps, sequence_length)
        for row in rows:
            print(f"  {row['arm']}: {row['seconds']:.3f} s", flush=True)
        save_rows(rows, json_path)
        return rows
    rows = []
    for arm in arm_names:
        if process_per_arm:
            row, _ = arms.train_step_in_child(
                model_name, arm, warmup, steps, sequence_length, keras.config.dtype_policy().name
            )
            rows.append(row)
        else:
            rows.append(time_arm(model_name, arm, warmup, steps, sequence_length))
            arms.release()
        print(f"  {arm}: {rows[-1]['seconds']:.3f} s", flush=True)
        save_rows(rows, json_path)
    return rows


def save_rows(rows, json_path):
    """Adds the ratios to `rows` and writes them to `json_path`, if given."""
    add_ratios(rows)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


def add_ratios(rows):
    reference = {row["arm"]: row["seconds"] for row in rows}
    for row in rows:
        row["vs_fft_band"] = (
            row["seconds"] / reference["fft_band"] if "fft_band" in reference else None
        )
        row["vs_fft"] = row["seconds"] / reference["fft"] if "fft" in reference else None


def verdict(rows):
    """Whether MFT meets the step-time targets, as a sentence."""
    by_arm = {row["arm"]: row for row in rows}
    mft = by_arm["mft"]
    met_band = mft["vs_fft_band"] <= 1.05
    met_fft = mft["seconds"] < by_arm["fft"]["seconds"]
    return (
        f"MFT / FFT of the band = {mft['vs_fft_band']:.2f} (target <= 1.05: "
        f"{'met' if met_band else 'MISSED'}); MFT / full FFT = {mft['vs_fft']:.2f} "
        f"(target < 1: {'met' if met_fft else 'MISSED'})"
    )


def ratio(value):
    return "" if value is None else f"{value:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(arms.MODELS), default="smollm2")
    parser.add_argument("--arms", default=",".join(arms.ARMS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--sequence-length",
        type=int,
        help="tokens per sequence (default: the model's, see arms.py)",
    )
    parser.add_argument(
        "--process-per-arm",
        action="store_true",
        help="time each arm in a fresh child process",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="build every arm's model at once and time their steps in turn",
    )
    parser.add_argument("--dtype", default="float32", help="the weights' dtype policy")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    keras.config.set_dtype_policy(args.dtype)
    if args.interleave and args.process_per_arm:
        parser.error("--interleave times the arms in one process; drop --process-per-arm")
    if args.sequence_length is not None and args.sequence_length < 1:
        parser.error(f"--sequence-length must be at least 1 token; got {args.sequence_length}")
    settings = arms.MODELS[args.model]
    sequence_length = args.sequence_length or settings["sequence_length"]
    print(
        f"{args.model} in {args.dtype} on {keras.backend.backend()}: band {settings['band']}, batch "
        f"{settings['batch_size']} x {sequence_length} tokens, median of "
        f"{args.steps} steps after {args.warmup}"
        f"{', a process per arm' if args.process_per_arm else ''}"
        f"{', interleaved' if args.interleave else ''}",
        flush=True,
    )
    rows = measure(
        args.model,
        args.arms.split(","),
        args.warmup,
        args.steps,
        sequence_length,
        args.json,
        args.process_per_arm,
        args.interleave,
    )
    print(
        arms.markdown_table(
            [
                "backend",
                "model",
                "arm",
                "trainable weights",
                "step (s)",
                "/ FFT band",
                "/ full FFT",
            ],
            [
                [
                    row["backend"],
                    row["model"],
                    row["arm"],
                    f"{row['trainable']:,}",
                    f"{row['seconds']:.3f}",
                    ratio(row["vs_fft_band"]),
                    ratio(row["vs_fft"]),
                ]
                for row in rows
            ],
        )
    )
    if {"mft", "fft", "fft_band"} <= {row["arm"] for row in rows}:
        print(verdict(rows))


if __name__ == "__main__":
    main()
