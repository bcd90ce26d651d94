"""Train-step time with glibc's default `malloc` settings and with freed memory kept.

Eager PyTorch allocates every weight-sized temporary with `malloc`. glibc
serves blocks above 32 MiB with a fresh `mmap` and unmaps them when freed, so
the next one is zero-filled again by the kernel, page by page. The
environment variables in `KEEP_FREED_MEMORY`, set before Python starts, make
glibc serve every block from its heap and keep freed memory for reuse. MFT
allocates more such temporaries than FFT (the mask selection), so it gains
more.

Each run is a child process (`train_step.py`, one arm) with or without
those variables; the settings alternate round by round, so both see the same
machine. The table shows the median step, and the child's peak resident
memory.

    KERAS_BACKEND=torch python benchmarks/allocator.py [--model llama7b_slice] [--json FILE]
"""

import argparse
import json
import statistics

import keras

import arms

KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
SETTINGS = {"default": {}, "keep freed memory": KEEP_FREED_MEMORY}


def measure(model_name, arm_names, rounds, warmup, steps):
    runs = {(setting, arm): [] for setting in SETTINGS for arm in arm_names}
    for round_index in range(rounds):
        for setting, extra_env in SETTINGS.items():
            for arm in arm_names:
                row, peak = arms.train_step_in_child(
                    model_name, arm, warmup, steps, extra_env=extra_env
                )
                seconds = row["seconds"]
                runs[setting, arm].append((seconds, peak))
                print(f"  round {round_index + 1}, {setting}, {arm}: {seconds:.2f} s, "
                      f"peak {peak / 2**30:.1f} GiB", flush=True)
    rows = []
    for arm in arm_names:
        row = {"backend": keras.backend.backend(), "model": model_name, "arm": arm}
        for setting in SETTINGS:
            row[setting] = {
                "seconds": statistics.median(seconds for seconds, _ in runs[setting, arm]),
                "peak_bytes": max(peak for _, peak in runs[setting, arm]),
            }
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(arms.MODELS), default="llama7b_slice")
    parser.add_argument("--arms", default="mft,fft_band")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    print(f"{args.model} on {keras.backend.backend()}, {args.rounds} round(s) of "
          f"{args.steps} steps after {args.warmup}", flush=True)
    rows = measure(args.model, args.arms.split(","), args.rounds, args.warmup, args.steps)
    default, kept = SETTINGS
    print(arms.markdown_table(
        ["backend", "arm", f"{default} (s)", f"{kept} (s)", "speed-up",
         f"peak GiB, {default}", f"peak GiB, {kept}"],
        [[row["backend"], row["arm"], f"{row[default]['seconds']:.2f}",
          f"{row[kept]['seconds']:.2f}",
          f"{row[default]['seconds'] / row[kept]['seconds']:.2f}x",
          f"{row[default]['peak_bytes'] / 2**30:.1f}", f"{row[kept]['peak_bytes'] / 2**30:.1f}"]
         for row in rows],
    ))
    by_arm = {row["arm"]: row for row in rows}
    if {"mft", "fft_band"} <= set(by_arm):
        for setting in SETTINGS:
            ratio = by_arm["mft"][setting]["seconds"] / by_arm["fft_band"][setting]["seconds"]
            print(f"MFT / FFT of the band, {setting}: {ratio:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
