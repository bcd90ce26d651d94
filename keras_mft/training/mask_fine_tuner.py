"""`MaskFineTuner`: a Keras callback that watches and steers mask training."""

import math
import os
import warnings

import keras
import numpy as np

from keras_mft.masking.wrapping import bake
from keras_mft.masking.wrapping import masked_layers_of
from keras_mft.saving.mask_file import save_masks
from keras_mft.training.score_budget import learning_rate_sum
from keras_mft.training.score_budget import score_std
from keras_mft.training.score_budget import warn_if_small


class MaskFineTuner(keras.callbacks.Callback):
    """Reports how the masks change, and optionally schedules, saves and stops.

    After each epoch, and every `report_every` steps if set, it adds to the
    Keras logs (the progress bar and `History`):

    - `mask_sparsity`: the fraction of all masked weights that are removed;
    - `mask_flips`: the fraction of mask entries changed since the last report;
    - `mask_changed`: the fraction that differs from the mask at the start;
    - `score_budget`: the score budget B spent so far (`keras_mft.score_budget`);
    - `sparsity/<projection>`, e.g. `sparsity/query`: the fraction removed
      from that projection over all masked blocks (the group a global
      selection shares one threshold over, and what a ramp moves);
    - with `per_matrix=True`, `sparsity/<layer path>` for each masked matrix.

    When training begins, it warns if the run's score budget is below 0.05.
    If the loss stops being finite, training stops with a warning, nothing
    more is saved or baked, and `non_finite_loss_step` is the step (from 1)
    where it happened; otherwise it is None.

    Args:
        report_every: also report every this many training steps.
        per_matrix: add the sparsity of each masked matrix to the logs.
        ramp_steps: if set, every sparsity grows linearly from 0 at step 0
            to its target (given to `wrap`) at step `ramp_steps`, counted
            across epochs.
        snapshot_dir: if set, where `save_masks` writes at the end of each
            epoch `best.mask` when `monitor` improves, and also
            `epoch-NNN.mask` if `save_best_only=False`.
        monitor: the logged value that decides the best snapshot.
        mode: `"min"` or `"max"`: whether a smaller or a larger `monitor` is
            better.
        save_best_only: see `snapshot_dir`.
        initial_value_threshold: the value `best.mask` must beat, as in
            `ModelCheckpoint`; when resuming, pass the best value so far.
        stop_below_flips: if set, stop once `mask_flips` has stayed below
            this fraction for `patience` reports in a row.
        patience: see `stop_below_flips`.
        bake_on_train_end: `keras_mft.bake` the model when training ends.
    """

    def __init__(
        self,
        *,
        report_every: int | None = None,
        per_matrix: bool = False,
        ramp_steps: int | None = None,
        snapshot_dir: str | os.PathLike | None = None,
        monitor: str = "val_loss",
        mode: str = "min",
        save_best_only: bool = True,
        initial_value_threshold: float | None = None,
        stop_below_flips: int | None = None,
        patience: int = 3,
        bake_on_train_end: bool = False,
    ):
        super().__init__()
        for name, value in (("report_every", report_every), ("ramp_steps", ramp_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive int or None. Received: {value!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max'. Received: {mode!r}")
        self.report_every = report_every
        self.per_matrix = per_matrix
        self.ramp_steps = ramp_steps
        self.snapshot_dir = snapshot_dir
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.initial_value_threshold = initial_value_threshold
        self.stop_below_flips = stop_below_flips
        self.patience = patience
        self.bake_on_train_end = bake_on_train_end

    def on_train_begin(self, logs=None):
        self._layers = masked_layers_of(self.model)
        self._targets = [layer.sparsity for layer in self._layers]
        fixed = [layer.name for layer in self._layers if layer.selection.fixed_sparsity is not None]
        if self.ramp_steps is not None and fixed:
            raise ValueError(
                f"`ramp_steps` cannot ramp N:M masks (layers {fixed[:3]}): their "
                "pattern fixes the sparsity. Remove `ramp_steps`."
            )
        self._initial = self._last = self._packed_masks()
        self._score_std = score_std(self.model)
        steps_per_epoch = self.params.get("steps")
        if steps_per_epoch:
            warn_if_small(self._score_budget(steps_per_epoch * self.params["epochs"]))
        self._quiet_reports, self._step = 0, 0
        self._best = self.initial_value_threshold
        if self._best is None:
            self._best = math.inf if self.mode == "min" else -math.inf
        self.non_finite_loss_step = None
        if self.snapshot_dir is not None:
            os.makedirs(self.snapshot_dir, exist_ok=True)

    def on_epoch_begin(self, epoch, logs=None):
        steps_per_epoch = self.params.get("steps")
        if steps_per_epoch:
            # Right after a restart (e.g. BackupAndRestore), epoch > 0.
            self._step = epoch * steps_per_epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.ramp_steps is not None and self._step <= self.ramp_steps:
            self._sync()
            fraction = self._step / self.ramp_steps
            for layer, target in zip(self._layers, self._targets):
                layer.set_sparsity(target * fraction)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.non_finite_loss_step = self._step
            self.model.stop_training = True
            warnings.warn(
                f"MaskFineTuner: the loss became {float(loss)} at step {self._step}, "
                "so training stopped and no later snapshot is saved. Check the data "
                "and the model's weights, or lower the learning rate.",
                stacklevel=2,
            )
            return
        if self.report_every and self._step % self.report_every == 0 and logs is not None:
            logs.update(self._report())

    def on_epoch_end(self, epoch, logs=None):
        if self.non_finite_loss_step is not None:
            return
        report = self._report()
        if logs is not None:
            logs.update(report)
        if self.snapshot_dir is not None:
            self._snapshot(epoch, logs or {})
        if self.stop_below_flips is not None and self._quiet_reports >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.bake_on_train_end and self.non_finite_loss_step is None:
            bake(self.model)

    def _sync(self):
        # On JAX, reading `self.model` writes the training state back into
        # the variables.
        return self.model

    def _packed_masks(self):
        self._sync()
        to_numpy = keras.ops.convert_to_numpy
        return [np.packbits(to_numpy(layer.keep_mask()).reshape(-1)) for layer in self._layers]

    def _report(self):
        current = self._packed_masks()
        sizes = [math.prod(layer.frozen_kernel.shape) for layer in self._layers]
        total = sum(sizes)
        kept = [int(np.bitwise_count(mask).sum()) for mask in current]
        flips = _count_differences(current, self._last)
        changed = _count_differences(current, self._initial)
        self._last = current
        if self.stop_below_flips is not None:
            quiet = flips / total < self.stop_below_flips
            self._quiet_reports = self._quiet_reports + 1 if quiet else 0
        report = {
            "mask_sparsity": 1.0 - sum(kept) / total,
            "mask_flips": flips / total,
            "mask_changed": changed / total,
            "score_budget": self._score_budget(self._step),
        }
        groups = {}
        for layer, size, kept_here in zip(self._layers, sizes, kept):
            group_size, group_kept = groups.get(layer.name, (0, 0))
            groups[layer.name] = (group_size + size, group_kept + kept_here)
        for name, (size, kept_here) in groups.items():
            report[f"sparsity/{name}"] = 1.0 - kept_here / size
        if self.per_matrix:
            for layer, size, kept_here in zip(self._layers, sizes, kept):
                path = layer.kernel_path.rsplit("/", 1)[0]
                report[f"sparsity/{path}"] = 1.0 - kept_here / size
        return report

    def _score_budget(self, steps):
        optimizer = self.model.optimizer
        # The schedule itself, not its value at the current step.
        learning_rate = optimizer.get_config()["learning_rate"]
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        updates = steps // (optimizer.gradient_accumulation_steps or 1)
        return learning_rate_sum(learning_rate, updates) / self._score_std

    def _snapshot(self, epoch, logs):
        if not self.save_best_only:
            save_masks(self.model, os.path.join(self.snapshot_dir, f"epoch-{epoch + 1:03d}.mask"))
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"MaskFineTuner: `{self.monitor}` is not in the logs "
                f"({sorted(logs)}), so no best snapshot was saved. Set "
                "`monitor` to one of them (pass validation data for 'val_loss').",
                stacklevel=2,
            )
            return
        if value < self._best if self.mode == "min" else value > self._best:
            self._best = value
            save_masks(self.model, os.path.join(self.snapshot_dir, "best.mask"))


def _count_differences(masks, others):
    return sum(int(np.bitwise_count(a ^ b).sum()) for a, b in zip(masks, others))
