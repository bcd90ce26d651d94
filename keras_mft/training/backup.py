"""`CrashSafeBackupAndRestore`: Keras' `BackupAndRestore`, safe against a kill while it saves."""

import json
import os
import shutil

import keras


def damaged(backup_dir, what):
    """The error of a backup that cannot be resumed: what is wrong, and what to do."""
    return ValueError(
        f"The training backup in {backup_dir} is damaged and cannot be resumed ({what}). "
        f"Delete {backup_dir} to train from the start."
    )


class CrashSafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backup is always whole.

    Keras writes its backup in place, so a process killed while it writes
    leaves a backup that cannot be resumed. This callback writes each backup
    into `backup_dir/next/`, flushes it, and only then renames it to
    `latest/` (the one it replaces is moved to `previous/` first and deleted
    last), so a complete backup always exists. A backup that cannot be read
    all the same raises a `ValueError` that says what to do.

    Args are those of `keras.callbacks.BackupAndRestore`, except
    `double_checkpoint`, which this makes unnecessary.
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        delete_checkpoint: bool = True,
    ):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self._latest = os.path.join(backup_dir, "latest")
        self._next = os.path.join(backup_dir, "next")
        self._previous = os.path.join(backup_dir, "previous")
        # The parent's `_load_model` reads these paths.
        self._weights_path = os.path.join(self._latest, "latest.weights.h5")
        self._training_metadata_path = os.path.join(self._latest, "training_metadata.json")

    def epochs_done(self, planned):
        """How many epochs the backup holds (0 if none): where a resumed `fit` starts.

        Raises `damaged` unless it is a whole number from 0 to the `planned` epochs.
        """
        for directory in (self._latest, self._previous):
            path = os.path.join(directory, "training_metadata.json")
            if not os.path.exists(path):
                continue
            try:
                with open(path, encoding="utf-8") as file:
                    epoch = json.load(file)["epoch"]
            except (OSError, ValueError, KeyError, TypeError):
                epoch = None
            if type(epoch) is not int or not 0 <= epoch <= planned:
                raise damaged(self.backup_dir, f"{path} holds no epoch from 0 to {planned}")
            return epoch
        return 0

    def on_train_begin(self, logs=None):
        if not os.path.isdir(self._latest) and os.path.isdir(self._previous):
            os.rename(self._previous, self._latest)  # killed between the two renames
        try:
            self._load_model()
        except (OSError, ValueError, KeyError) as error:
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise damaged(self.backup_dir, f"{type(error).__name__}: {first_line}") from None

    def _save_model(self):
        shutil.rmtree(self._next, ignore_errors=True)
        os.makedirs(self._next)
        weights = os.path.join(self._next, "latest.weights.h5")
        self.model.save_weights(weights)
        metadata = os.path.join(self._next, "training_metadata.json")
        with open(metadata, "w", encoding="utf-8") as file:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, file)
        for path in (weights, metadata):
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        shutil.rmtree(self._previous, ignore_errors=True)
        if os.path.isdir(self._latest):
            os.rename(self._latest, self._previous)
        os.rename(self._next, self._latest)
        shutil.rmtree(self._previous, ignore_errors=True)
