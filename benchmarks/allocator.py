"""Train-step time with the default memory allocation, with freed memory kept, and
(PyTorch) with huge pages.

Eager PyTorch allocates every weight-sized temporary with `malloc`. glibc
serves blocks above 32 MiB with a fresh `mmap` and unmaps them when freed, so
the next one is zero-filled again by the kernel, page by page. The
environment variables in `KEEP_FREED_MEMORY`, set before Python starts, make
glibc serve every block from its heap and keep freed memory for reuse. MFT
allocates more such temporaries than FFT (the mask selection), so it gains
more. `HUGE_PAGES` is PyTorch's own switch: its CPU allocator then asks the
kernel for 2 MiB pages for blocks of 2 MiB and more, so a fresh block takes
one page fault per 2 MiB instead of one per 4 KiB (it needs transparent huge
pages set to `madvise` or `always` in
`/sys/kernel/mm/transparent_hugepage/enabled`). JAX and TensorFlow do not
read it, so only PyTorch runs that setting.

Each run is a child process (`train_step.py`, one arm) with the variables
of one setting; the settings alternate round by round, so all of them see
the same machine. The table shows the median step, and the child's peak resident
memory.

    KERAS_BACKEND=torch python benchmarks/allocator.py [--model llama7b_slice] [--json FILE]
"""

import argparse
import json
import statistics

import arms
import keras

KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
HUGE_PAGES = {"THP_MEM_ALLOC_ENABLE": "1"}


def settings():
    """The environment of each setting timed on this backend, by name."""
    named = {"default": {}, "keep freed memory": KEEP_FREED_MEMORY}
    if keras.backend.backend() == "torch":
        named["huge pages"] = HUGE_PAGES
    return named


def measure(model_name, arm_names, named_settings, rounds, warmup, steps):
    runs = {(setting, arm): [] for setting in named_settings for arm in arm_names}
    for round_index in range(rounds):
        for setting, extra_env in named_settings.items():
            for arm in arm_names:
                row, peak = arms.train_step_in_child(
                    model_name, arm, warmup, steps, extra_env=extra_env
                )
                seconds = row["seconds"]
                runs[setting, arm].append((seconds, peak))
                print(
                    f"  round {round_index + 1}, {setting}, {arm}: {seconds:.2f} s, "
                    f"peak {peak / 2**30:.1f} GiB",
                    flush=True,
                )
    rows = []
    for arm in arm_names:
        row = {"backend": keras.backend.backend(), "model": model_name, "arm": arm}
        for setting in named_settings:
            row[setting] = {
                "seconds": statistics.median(seconds for seconds, _ in runs[setting, arm]),
                "peak_bytes": max(peak for _, peak in runs[setting, arm]),
            }
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(arms.MODELS), default="llama7b_slice")
    parser.add_argument("--arms", default="mft,fft_band")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    print(
        f"{args.model} on {keras.backend.backend()}, {args.rounds} round(s) of "
        f"{args.steps} steps after {args.warmup}",
        flush=True,
    )
    named_settings = settings()
    rows = measure(
        args.model, args.arms.split(","), named_settings, args.rounds, args.warmup, args.steps
    )
    print(
        arms.markdown_table(
            ["backend", "arm", "setting", "step (s)", "speed-up", "peak GiB"],
            [
                [
                    row["backend"],
                    row["arm"],
                    setting,
                    f"{row[setting]['seconds']:.2f}",
                    f"{row['default']['seconds'] / row[setting]['seconds']:.2f}x",
                    f"{row[setting]['peak_bytes'] / 2**30:.1f}",
                ]
                for row in rows
                for setting in named_settings
            ],
        )
    )
    by_arm = {row["arm"]: row for row in rows}
    if {"mft", "fft_band"} <= set(by_arm):
        for setting in named_settings:
            ratio = by_arm["mft"][setting]["seconds"] / by_arm["fft_band"][setting]["seconds"]
            print(f"MFT / FFT of the band, {setting}: {ratio:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
