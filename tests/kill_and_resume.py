"""Kills `keras-mft train` with SIGKILL, resumes it, and compares the masks.

`keras-mft train` killed with SIGKILL in the middle of training, then
continued with `--resume`, must end with the masks of an uninterrupted run.
It keeps a backup of the whole training state (scores, optimizer, step) in
`OUT/backup/latest/`, written at the end of every epoch by
`keras_mft.CrashSafeBackupAndRestore`, Keras' `BackupAndRestore` made safe
against a kill while it writes. This script trains three times on the same
GSM8K problems with the same seed:

1. without interruption;
2. killed with SIGKILL as soon as the first epoch's backup exists, so the
   process dies during the second epoch;
3. the killed run again with `--resume`, which restarts from the backup.

It then checks that runs 1 and 3 wrote identical mask files (the final
`masks.mask` and the lowest-loss epoch's `best.mask`) and that run 3's
`history.json` holds all three epochs and every step, and exits with status
1 if not. `test_cli.py::test_kill_and_resume_script` runs it on a tiny
preset; run it by hand from the repository root:

    python tests/kill_and_resume.py [--preset DIR] [--backend jax] [--work DIR]

Without `--preset` it uses the embedded SmolLM2-135M-Instruct (a few
minutes on a laptop CPU).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

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
        "3",
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

    interrupted = os.path.join(work, "interrupted")
    process = train(interrupted, args.preset, args.backend, data)
    metadata = os.path.join(interrupted, "backup", "latest", "training_metadata.json")
    while not os.path.exists(metadata) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_mid_run = not os.path.exists(os.path.join(interrupted, "masks.mask"))
    with open(metadata, encoding="utf-8") as file:
        epoch = json.load(file)["epoch"]
    print(
        f"Killed with SIGKILL after epoch {epoch} of 3 was backed up "
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
    whole = all(len(history["epochs"]["loss"]) == 3 for history in histories) and len(
        histories[0]["step_losses"]
    ) == len(histories[1]["step_losses"])
    print(f"Resumed run's history.json holds all 3 epochs and every step: {whole}")
    same = same and whole
    print(f"Files in {work}")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
