"""Plots and target checks from the benchmarks' JSON files.

Reads `DIR/NAME_BACKEND.json` for NAME in `train_step_smollm2`,
`train_step_llama7b_slice[_lora,_long,_fixed]`, `selection`, `memory`,
`inference` and `harness` (whichever exist), prints whether each target is
met, and draws one PNG per benchmark but `harness` into `--images`.

    python benchmarks/report.py [--results docs/benchmarks] [--images docs/images]
"""

import argparse
import json
import pathlib

import numpy as np
from matplotlib.figure import Figure

BACKENDS = ("jax", "torch", "tensorflow")


def load(results, name):
    """{backend: parsed JSON} for the backends that have `name_BACKEND.json`."""
    found = {}
    for backend in BACKENDS:
        path = results / f"{name}_{backend}.json"
        if path.exists():
            found[backend] = json.loads(path.read_text(encoding="utf-8"))
    return found


def train_step_runs(results, model):
    """`load` of `train_step_MODEL`, with the rows of `train_step_MODEL_lora` added
    where that second process timed arms the first did not."""
    runs = load(results, f"train_step_{model}")
    for backend, rows in load(results, f"train_step_{model}_lora").items():
        timed = {row["arm"] for row in runs.get(backend, [])}
        runs.setdefault(backend, []).extend(row for row in rows if row["arm"] not in timed)
    return runs


def grouped_bars(axes, groups, series, values, ylabel, title, line=None):
    """Bars of `values[s][g]` for each series s, side by side within each group g."""
    width = 0.8 / len(series)
    for index, name in enumerate(series):
        offsets = np.arange(len(groups)) + (index - (len(series) - 1) / 2) * width
        axes.bar(offsets, [values[name].get(group, np.nan) for group in groups], width, label=name)
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if line is not None:
        axes.axhline(line, color="black", linewidth=1, linestyle="--")
    axes.legend()


def band_check(label, mft):
    """The target on MFT's row of a train-step run: at most 1.05x FFT of the band."""
    return (f"{label}: MFT / FFT band <= 1.05", mft["vs_fft_band"], mft["vs_fft_band"] <= 1.05)


def train_step_plot(results, images, checks):
    models = [m for m in ("smollm2", "llama7b_slice") if load(results, f"train_step_{m}")]
    if not models:
        return
    figure = Figure(figsize=(6 * len(models), 4), layout="constrained")
    for axes, model in zip(figure.subplots(1, len(models), squeeze=False)[0], models):
        runs = train_step_runs(results, model)
        values = {b: {row["arm"]: row["vs_fft_band"] for row in rows} for b, rows in runs.items()}
        arms = [row["arm"] for row in next(iter(runs.values()))]
        grouped_bars(
            axes,
            arms,
            list(runs),
            values,
            "step time / FFT of the band",
            f"Train step, {model}",
            line=1.0,
        )
        for backend, rows in runs.items():
            by_arm = {row["arm"]: row for row in rows}
            checks.append(band_check(f"train step {model} {backend}", by_arm["mft"]))
            if by_arm["mft"]["vs_fft"] is not None:
                checks.append(
                    (
                        f"train step {model} {backend}: MFT / full FFT < 1",
                        by_arm["mft"]["vs_fft"],
                        by_arm["mft"]["vs_fft"] < 1,
                    )
                )
    # The same target with more tokens per step (`train_step.py --sequence-length`).
    for backend, rows in load(results, "train_step_llama7b_slice_long").items():
        mft = {row["arm"]: row for row in rows}["mft"]
        checks.append(
            band_check(f"train step llama7b_slice, {mft['tokens']} tokens, {backend}", mft)
        )
    # The same target for MFT with its masks held fixed: what any selection
    # method could reach at best (`train_step.py --arms ...,mft_fixed`).
    for backend, rows in load(results, "train_step_llama7b_slice_fixed").items():
        mft_fixed = {row["arm"]: row for row in rows}["mft_fixed"]
        checks.append(
            band_check(
                f"train step llama7b_slice {backend}, masks held fixed (no selection)", mft_fixed
            )
        )
    figure.savefig(images / "bench_train_step.png", dpi=100)


def selection_plot(results, images, checks):
    runs = load(results, "selection")
    if not runs:
        return
    slices = load(results, "train_step_llama7b_slice")
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    methods = ("keras-mft", "sort", "top_k")
    values = {}
    for backend, rows in runs.items():
        largest = max(rows, key=lambda row: np.prod(row["shape"]))
        values[backend] = {method: largest[method] for method in methods}
        speedup = largest["sort"] / largest["keras-mft"]
        checks.append((f"selection {backend}: sort / keras-mft >= 3", speedup, speedup >= 3))
        if backend in slices:
            step = {row["arm"]: row["seconds"] for row in slices[backend]}["mft"]
            share = largest["keras-mft"] / step
            checks.append(
                (f"selection {backend}: share of a 7B-slice MFT step < 0.05", share, share < 0.05)
            )
    grouped_bars(
        axes,
        list(methods),
        list(values),
        values,
        "seconds (log scale)",
        "Mask selection, one 4096x11008 matrix",
    )
    axes.set_yscale("log")
    figure.savefig(images / "bench_selection.png", dpi=100)


def memory_plot(results, images, checks):
    runs = load(results, "memory")
    if not runs:
        return
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    values = {
        "MFT": {b: row["mft_bytes_per_weight"] for b, row in runs.items()},
        "FFT of the band": {b: row["fft_band_bytes_per_weight"] for b, row in runs.items()},
    }
    for backend, row in runs.items():
        checks.append(
            (
                f"memory {backend}: MFT bytes per masked weight <= 16",
                row["mft_bytes_per_weight"],
                row["mft_bytes_per_weight"] <= 16,
            )
        )
    grouped_bars(
        axes,
        list(runs),
        list(values),
        values,
        "peak bytes per masked weight",
        "Training memory above a norms-only reference",
        line=16,
    )
    figure.savefig(images / "bench_memory.png", dpi=100)


def inference_plot(results, images, checks):
    runs = load(results, "inference")
    if not runs:
        return
    figure = Figure(figsize=(12, 4), layout="constrained")
    for axes, job in zip(figure.subplots(1, 2), ("logits", "generation")):
        values = {
            b: {row["variant"]: row["vs_original"] for row in rows if row["job"] == job}
            for b, rows in runs.items()
        }
        grouped_bars(
            axes,
            ["original", "wrapped", "baked"],
            list(runs),
            values,
            "time / original model",
            f"Inference: {job}",
            line=1.0,
        )
        for backend in runs:
            ratio = values[backend]["baked"]
            checks.append(
                (
                    f"inference {job} {backend}: baked / original within 1.00 +- 0.03",
                    ratio,
                    abs(ratio - 1) <= 0.03,
                )
            )
    figure.savefig(images / "bench_inference.png", dpi=100)


def harness_checks(results, checks):
    """The lm-eval model's target: no fewer requests per second than lm-eval's `hf`."""
    for backend, rows in load(results, "harness").items():
        (row,) = [row for row in rows if row["model"] == "keras-mft"]
        checks.append(
            (
                f"lm-eval {backend}: keras-mft / hf requests per second >= 1",
                row["vs_hf"],
                row["vs_hf"] >= 1,
            )
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="docs/benchmarks", type=pathlib.Path)
    parser.add_argument("--images", default="docs/images", type=pathlib.Path)
    args = parser.parse_args(argv)
    args.images.mkdir(parents=True, exist_ok=True)
    checks = []
    for plot in (train_step_plot, selection_plot, memory_plot, inference_plot):
        plot(args.results, args.images, checks)
    harness_checks(args.results, checks)
    print("| target | measured | |\n|---|---:|---|")
    for name, value, met in checks:
        print(f"| {name} | {value:.3f} | {'met' if met else 'MISSED'} |")


if __name__ == "__main__":
    main()
