"""Kills `keras-mft train` with SIGKILL mid-epoch, resumes it, and compares the run.

`keras-mft train` killed with SIGKILL in the middle of training, then
continued with `--resume`, must end as an uninterrupted run ends. With
`--steps-per-epoch 2`, the whole training state (scores, optimizer, step) is
backed up every 2 steps in `OUT/backup/latest/` by
`keras_mft.CrashSafeBackupAndRestore` (Keras' `BackupAndRestore` made safe
against a kill while it writes), and the batches come in an order fixed by
the seed (`keras_mft.training.batches.Batches`). This script trains one pass over 12
GSM8K problems three times with the same seed:

1. without interruption;
2. killed with SIGKILL as soon as a backup chosen at random (after step 2,
   4, ...) exists, so the process dies in the middle of the pass;
3. the killed run again with `--resume`, which restarts from the backup.

It then checks that runs 1 and 3 wrote identical mask files (the final
`masks.mask` and the best `best.mask`), the same loss at every step, and
that run 3's `history.json` holds every epoch and step, and exits with
status 1 if not. `test_cli.py::test_kill_and_resume_script` runs it on a
tiny preset; run it by hand from the repository root:

    python tests/kill_and_resume.py [--preset DIR] [--backend jax] [--work DIR]

Without `--preset` it uses the embedded SmolLM2-135M-Instruct (a few
minutes on a laptop CPU).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import keras_mft


def train(out, preset, backend, data, resume=False):
    command = [
        sys.executable,
        "-m",
        "keras_mft",
        "train",
        "--data",
        data,
        "--out",
        out,
        "--layers",
        "0:2",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--sequence-length",
        "32",
        "--batch-size",
        "2",
        "--learning-rate",
        "0.001",
        "--seed",
        "7",
    ]
    command += ["--preset", preset] if preset else []
    command += ["--backend", backend] if backend else []
    command += ["--resume"] if resume else []
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def epochs_backed_up(metadata):
    try:
        with open(metadata, encoding="utf-8") as file:
            return json.load(file)["epoch"]
    except (OSError, ValueError):  # not written yet, or being replaced
        return 0


def finish(process):
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"keras-mft train failed:\n{err}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="a preset directory (default: the embedded model)")
    parser.add_argument("--backend", choices=("jax", "torch", "tensorflow"))
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="keras-mft-kill-")
    os.makedirs(work, exist_ok=True)

    problems = keras_mft.gsm8k("train")
    data = os.path.join(work, "train.jsonl")
    with open(data, "w", encoding="utf-8") as file:
        for prompt, response in list(zip(problems["prompts"], problems["responses"]))[:12]:
            file.write(json.dumps({"prompt": prompt, "response": response}) + "\n")

    uninterrupted = os.path.join(work, "uninterrupted")
    finish(train(uninterrupted, args.preset, args.backend, data))

    with open(os.path.join(uninterrupted, "history.json"), encoding="utf-8") as file:
        steps = len(json.load(file)["step_losses"])
    epochs = -(-steps // 2)  # Keras epochs of 2 steps
    if epochs < 3:
        raise SystemExit(f"{steps} steps are too few to kill the run in the middle.")

    interrupted = os.path.join(work, "interrupted")
    process = train(interrupted, args.preset, args.backend, data)
    metadata = os.path.join(interrupted, "backup", "latest", "training_metadata.json")
    kill_after = random.randrange(1, epochs - 1)  # a backup before the last two
    while process.poll() is None and epochs_backed_up(metadata) < kill_after:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_mid_run = not os.path.exists(os.path.join(interrupted, "masks.mask"))
    print(
        f"Killed with SIGKILL after step {2 * epochs_backed_up(metadata)} of {steps} was backed up "
        f"(training unfinished: {killed_mid_run})."
    )
    if not killed_mid_run:
        raise SystemExit("The kill came after training ended; nothing was checked.")

    finish(train(interrupted, args.preset, args.backend, data, resume=True))
    same = True
    for name in ("masks.mask", "best.mask"):
        with open(os.path.join(uninterrupted, name), "rb") as file:
            expected = file.read()
        with open(os.path.join(interrupted, name), "rb") as file:
            resumed = file.read()
        print(f"Resumed run's {name} identical to the uninterrupted run's: {expected == resumed}")
        same = same and expected == resumed
    histories = []
    for run in (uninterrupted, interrupted):
        with open(os.path.join(run, "history.json"), encoding="utf-8") as file:
            histories.append(json.load(file))
    whole = (
        len(histories[1]["epochs"]["loss"]) == epochs and len(histories[1]["step_losses"]) == steps
    )
    print(f"Resumed run's history.json holds every epoch and step: {whole}")
    expected, resumed = (np.array(history["step_losses"]) for history in histories)
    same_losses = whole and np.allclose(expected, resumed, rtol=1e-5, atol=0)
    print(f"Resumed run's loss at every step equal to the uninterrupted run's: {same_losses}")
    same = same and whole and same_losses
    print(f"Files in {work}")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
