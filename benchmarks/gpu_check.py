"""The GPU check: what a GPU changes, measured in one run of under 8 minutes.

For JAX and PyTorch (each backend in processes of its own, since Keras reads
`KERAS_BACKEND` once), with the weights in bfloat16:

- `selection.py`: one mask of a 4096x4096 and a 4096x11008 matrix, by
  keras-mft, by a full sort and by `ops.top_k`;
- `train_step.py --interleave`: MFT against FFT of the band on the LLaMA-7B
  slice, at 1 x 512 and at 1 x 2048 tokens.

Each script writes its JSON into `--out` (`gpu_selection_BACKEND.json`,
`gpu_train_step_llama7b_slice[_long]_BACKEND.json`, as docs/benchmarks.md
reads them), and this one prints one table with the targets: on JAX, MFT /
FFT of the band at most 1.30 at 512 tokens and 1.10 at 2048; on PyTorch,
selection no slower than a full sort.

It needs no TensorFlow and no network (the train steps are Keras'
`train_on_batch` on arrays). On a machine without keras and keras-hub,
install the wheels that travel with the working tree first (see
docs/benchmarks.md, "On a GPU").

    python benchmarks/gpu_check.py [--backends jax,torch] [--out DIR] [--tiny]

`--tiny` runs the same on the tiny model and small matrices, on any device:
the tests run it on the CPU, so that the check cannot fail on a GPU for a
trivial reason.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# MFT / FFT of the band, by backend and tokens a step (the tiny run keeps the keys).
TARGETS = {("jax", 512): 1.30, ("jax", 2048): 1.10}


def run(script, arguments, backend, timeout):
    """Runs `benchmarks/SCRIPT.py ARGUMENTS` on `backend`; its output goes to ours."""
    command = [sys.executable, os.path.join(HERE, f"{script}.py"), *arguments]
    print(f"$ KERAS_BACKEND={backend} {' '.join(command[1:])}", flush=True)
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(command, env=environment, check=True, timeout=timeout)


def measure(backend, out, tiny, timeout):
    """Runs the scripts on `backend`; returns the paths of their JSON files."""
    model, sizes, steps = (
        ("tiny", "64x48", 1) if tiny else ("llama7b_slice", "4096x4096,4096x11008", 10)
    )
    paths = {"selection": os.path.join(out, f"gpu_selection_{backend}.json")}
    run(
        "selection",
        ["--sizes", sizes, "--repeats", str(steps), "--json", paths["selection"]],
        backend,
        timeout,
    )
    for tokens, name in ((512, "llama7b_slice"), (2048, "llama7b_slice_long")):
        paths[tokens] = os.path.join(out, f"gpu_train_step_{name}_{backend}.json")
        arguments = [
            "--model",
            model,
            "--arms",
            "fft_band,mft",
            "--interleave",
            "--dtype",
            "bfloat16",
        ]
        length = tokens // 32 if tiny else tokens  # the tiny model's batch: 2 x 16 and 2 x 64
        arguments += ["--sequence-length", str(length), "--warmup", "2", "--steps", str(steps)]
        run("train_step", [*arguments, "--json", paths[tokens]], backend, timeout)
    return paths


def rows_of(backend, paths):
    """The table's rows for one backend: `(backend, measure, value, target, verdict)`."""
    rows = []
    for key, path in paths.items():
        with open(path, encoding="utf-8") as file:
            results = json.load(file)
        if key == "selection":
            for result in results:
                size = "x".join(str(n) for n in result["shape"])
                speedup = result["sort"] / result["keras-mft"]
                target = ">= 1" if backend == "torch" else ""
                met = speedup >= 1 if target else None
                rows.append((backend, f"selection {size}: sort / keras-mft", speedup, target, met))
            continue
        mft = next(row for row in results if row["arm"] == "mft")
        target = TARGETS.get((backend, key))
        met = None if target is None else mft["vs_fft_band"] <= target
        label = f"train step, {mft['tokens']} tokens: MFT / FFT of the band"
        rows.append(
            (backend, label, mft["vs_fft_band"], "" if target is None else f"<= {target}", met)
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs", "benchmarks"))
    parser.add_argument("--tiny", action="store_true", help="the tiny model and matrices")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per script run")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start, rows = time.perf_counter(), []
    for backend in args.backends.split(","):
        rows += rows_of(backend, measure(backend, args.out, args.tiny, args.timeout))
    print(f"\nThe GPU check, {time.perf_counter() - start:.0f} s:\n")
    print("| backend | measure | value | target | |\n|---|---|---:|---|---|")
    for backend, label, value, target, met in rows:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"| {backend} | {label} | {value:.2f} | {target} | {verdict} |")


if __name__ == "__main__":
    main()
