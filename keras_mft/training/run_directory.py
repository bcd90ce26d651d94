"""The run directory of `keras_mft.train`: what it holds, its checks and its lock.

A run keeps a directory:

| file | written |
|---|---|
| `run.json` | at the start: the run's settings, which a resumed run must repeat |
| `backup/` | at each (Keras) epoch's end: the whole training state; removed last |
| `best.mask` | when the monitored loss improves (a wrapped model) |
| `masks.mask` | at the end (a wrapped model) |
| `training_curve.png`, `mask_change.png` | at the end (the second for masks) |
| `history.json` | at the end, after the above: the run is finished |
| `run.lock` | while it trains: a second run into the directory is refused |

Nothing is written into a directory that holds anything else, a finished
run, or a run that is training now (it holds the lock, the operating
system's through `filelock`: it goes with the process that held it, so a
killed run leaves nothing stuck).
"""

import contextlib
import json
import os

import filelock
import keras

from keras_mft.training.backup import damaged

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
BACKUP_DIR = "backup"
LOCK_FILE = "run.lock"


def check_run_directory(out_dir, resume=False):
    """Refuses an `out_dir` that `train` may not write into, or resume from."""
    is_run = os.path.isfile(os.path.join(out_dir, RUN_FILE))
    taken = os.path.exists(out_dir) and (
        not os.path.isdir(out_dir) or set(os.listdir(out_dir)) - {LOCK_FILE}
    )
    if taken and not is_run:
        raise ValueError(
            f"{out_dir} exists and is not a keras-mft run directory (it has no {RUN_FILE}): "
            "a run never writes over other files. Choose a new or empty directory."
        )
    finished = os.path.isfile(os.path.join(out_dir, HISTORY_FILE))
    if is_run and finished and not os.path.exists(os.path.join(out_dir, BACKUP_DIR)):
        raise ValueError(
            f"{out_dir} holds a finished run: choose another directory, or delete "
            "this one to train there again."
        )
    if is_run and not resume:
        raise ValueError(
            f"{out_dir} holds an interrupted run: resume it (`resume=True`, --resume), "
            "or choose another directory."
        )
    if resume and not is_run:
        raise ValueError(f"{out_dir} holds no interrupted run to resume.")


@contextlib.contextmanager
def claimed(out_dir, settings, resume):
    """Holds `out_dir`'s lock while the run trains, after checking what it holds
    and recording a new run's settings (`out_dir` None: nothing to do).
    """
    if out_dir is None:
        yield
        return
    check_run_directory(out_dir, resume)  # before writing anything, even the lock
    os.makedirs(out_dir, exist_ok=True)
    try:
        lock = filelock.FileLock(os.path.join(out_dir, LOCK_FILE), timeout=0)
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(
            f"Another run is training into {out_dir} now. Wait for it to end, or choose "
            "another directory."
        ) from None
    with lock:
        _check_settings(
            out_dir, settings, resume
        )  # again under the lock: another run may have ended
        yield


def _check_settings(out_dir, settings, resume):
    """Checks what `out_dir` holds against `resume`, and records a new run's settings."""
    check_run_directory(out_dir, resume)
    run_file = os.path.join(out_dir, RUN_FILE)
    if resume:
        with open(run_file, encoding="utf-8") as file:
            saved = json.load(file)
        changed = [
            f"{key} {saved.get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if saved.get(key) != value
        ]
        if changed:
            raise ValueError(
                f"These settings differ from the interrupted run's ({run_file}): "
                f"{'; '.join(changed)}. Resume with the same settings and data."
            )
        return
    write_json(run_file, settings)


def write_json(path, value):
    """Writes `value` to `path` whole or not at all: a kill leaves the old file."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class Progress(keras.callbacks.Callback):
    """The logs of each epoch and the loss of each step, saved to `path` at each
    epoch's end; a resumed run reads back the epochs its backup restored."""

    def __init__(self, path, epochs_done, steps_per_epoch):
        super().__init__()
        self.path = path
        self.epochs, self.step_losses = {}, []
        if epochs_done and path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as file:
                    saved = json.load(file)
                epochs = {key: values[:epochs_done] for key, values in saved["epochs"].items()}
                step_losses = saved["step_losses"][: epochs_done * steps_per_epoch]
                numbers = [*step_losses, *(value for values in epochs.values() for value in values)]
                whole = all(len(values) == epochs_done for values in epochs.values())
                if not whole or not all(type(n) in (int, float) for n in numbers):
                    raise TypeError
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise damaged(
                    os.path.dirname(path), f"{path} holds no logs of {epochs_done} epochs"
                ) from None
            self.epochs, self.step_losses = epochs, step_losses

    def best(self, key):
        """The lowest `key` of the epochs so far, or None."""
        return min(self.epochs[key]) if self.epochs.get(key) else None

    def on_train_batch_end(self, batch, logs=None):
        self.step_losses.append(float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.epochs.setdefault(key, []).append(float(value))
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_json(self.path, {"epochs": self.epochs, "step_losses": self.step_losses})
