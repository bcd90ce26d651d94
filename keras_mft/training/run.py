"""`train`: one training run as the paper's, written once for the CLI, the demo and the protocol.

With `out_dir` the run keeps a directory (`keras_mft.training.run_directory`).
A run killed at any moment resumes with `resume=True` from its last backup,
on the batches that would have come next, and ends as if it never stopped.
"""

import contextlib
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence

import keras
import numpy as np

from keras_mft import plot
from keras_mft.masking.layers import is_masked
from keras_mft.masking.wrapping import masks_of
from keras_mft.saving.mask_file import save_masks
from keras_mft.training import checkpointing
from keras_mft.training import score_budget as budgets
from keras_mft.training.backup import CrashSafeBackupAndRestore
from keras_mft.training.batches import Batches
from keras_mft.training.distribution import batch_share
from keras_mft.training.mask_fine_tuner import MaskFineTuner
from keras_mft.training.optimizer import LEARNING_RATE
from keras_mft.training.optimizer import compile_like_paper
from keras_mft.training.optimizer import paper_optimizer
from keras_mft.training.run_directory import BACKUP_DIR
from keras_mft.training.run_directory import HISTORY_FILE
from keras_mft.training.run_directory import Progress
from keras_mft.training.run_directory import claimed
from keras_mft.training.run_directory import write_json


def train(
    model: keras.Model,
    data: tuple,
    *,
    epochs: int = 2,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    score_budget: float | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    validation_data: tuple | None = None,
    steps_per_epoch: int | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
    gradient_checkpointing: bool = False,
) -> dict:
    """Trains a KerasHub `CausalLM` as the paper's run does: its masks if it is wrapped.

    It compiles the model with the paper's optimiser, schedule and loss for
    the run's number of updates (for masks, at the peak learning rate that
    spends the score budget, `keras_mft.score_budget`), feeds the batches in
    an order fixed by the seed, and logs how the masks change
    (`MaskFineTuner`, which it adds before the other callbacks).

    Args:
        model: a `CausalLM` taking token ids (`preprocessor=None`); wrapped
            by `keras_mft.wrap` to learn masks, or not (full fine-tuning,
            LoRA): whatever is trainable trains.
        data: `(x, y, sample_weight)`, from `keras_mft.instruction_dataset`.
        epochs: passes over `data`.
        batch_size: sequences per batch.
        gradient_accumulation_steps: batches averaged into each update; the
            schedule and the budget count updates.
        score_budget: the score budget B that sets the peak learning rate of
            a wrapped model (default 0.47, the paper's math run).
        learning_rate: the peak learning rate instead (default for a model
            without masks: 2e-5, the paper's).
        seed: the seed of the batches' order, drawn anew for each pass.
        validation_data: scored at each epoch's end as `val_loss`, which then
            chooses `best.mask` (else the training loss does).
        steps_per_epoch: end a Keras epoch every this many batches:
            validation, logs, `best.mask` and the backup then come that often.
        out_dir: the run directory (see the module docstring), or None to
            keep no files. It must be new, empty or a run's own.
        resume: continue the interrupted run in `out_dir`, which must have
            been started with the same settings and data.
        callbacks: more Keras callbacks, e.g. `keras.callbacks.TensorBoard`.
        verbose: as for `model.fit`; 0 also silences the opening line.
        gradient_checkpointing: recompute each decoder block's activations in
            the backward pass (`keras_mft.gradient_checkpointing`): the same
            results in less memory and more time.

    Returns:
        `{"learning_rate", "score_budget", "updates", "epochs", "step_losses",
        "files"}`: the peak learning rate, B (None without masks), the
        number of updates, each logged value per epoch, the loss of each
        step, and `{what: path}` of the files written.

    Example:

    ```python
    model = keras_mft.wrap(keras_mft.tiny_smollm2(), layers="0:2", seed=0)
    tokenizer = model.preprocessor.tokenizer
    model.preprocessor = None  # the data below is token ids
    pairs = {"prompts": ["What is 2 + 2?"] * 8, "responses": ["4"] * 8}
    data = keras_mft.instruction_dataset(tokenizer, pairs, sequence_length=64)
    result = keras_mft.train(model, data, epochs=1, batch_size=4, out_dir="run", verbose=0)
    result["files"]["masks"]  # 'run/masks.mask'
    ```
    """
    masked = any(is_masked(layer) for layer in model._flatten_layers())
    batches = Batches(data, batch_size, epochs, seed, part=batch_share())
    accumulation = gradient_accumulation_steps
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(
            f"`gradient_accumulation_steps` must be an int >= 1, not {accumulation!r}."
        )
    updates = batches.total_steps // accumulation
    if updates < 1:
        raise ValueError(
            f"{batches.total_steps} batches make no update at gradient_accumulation_steps="
            f"{accumulation}: train on more data or accumulate fewer batches."
        )
    if batches.total_steps % accumulation:
        warnings.warn(
            f"The last {batches.total_steps % accumulation} of the {batches.total_steps} batches "
            f"make no update: it is not a multiple of gradient_accumulation_steps={accumulation}.",
            stacklevel=2,
        )
    budgets.check_rate_arguments(score_budget, learning_rate)
    settings = {
        "masks": _mask_configs(model),
        "epochs": epochs,
        "batch_size": batch_size,
        "gradient_accumulation_steps": accumulation,
        "score_budget": score_budget,
        "learning_rate": learning_rate,
        "seed": seed,
        "steps_per_epoch": steps_per_epoch,
        "data": _digest(data),
        "validation_data": _digest(validation_data),
    }
    if masked:
        learning_rate, budget = budgets.peak_learning_rate(
            updates, budgets.score_std(model), score_budget, learning_rate
        )
    elif score_budget is not None:
        raise ValueError("A score budget sets the learning rate of masks; this model has none.")
    else:
        learning_rate, budget = learning_rate or LEARNING_RATE, None
    with claimed(out_dir, settings, resume):
        if verbose != 0:
            print(
                f"{updates} updates of {batch_size * accumulation} sequences, peak learning rate "
                f"{learning_rate:.3g}" + (f": score budget B = {budget:.3g}." if masked else ".")
            )
        accumulated = {"gradient_accumulation_steps": accumulation} if accumulation > 1 else {}
        compile_like_paper(model, paper_optimizer(updates, learning_rate, **accumulated))
        initial_masks = masks_of(model) if masked else None
        # An epoch no longer than the run: Keras sizes some buffers by it.
        steps_per_epoch = min(steps_per_epoch or batches.steps_per_pass, batches.total_steps)
        backup = None  # deleted once the results are written, not when `fit` ends:
        if out_dir is not None:
            backup = CrashSafeBackupAndRestore(
                os.path.join(out_dir, BACKUP_DIR), delete_checkpoint=False
            )
        epochs_planned = math.ceil(batches.total_steps / steps_per_epoch)
        done = backup.epochs_done(epochs_planned) if backup else 0
        progress = Progress(
            out_dir and os.path.join(out_dir, BACKUP_DIR, "progress.json"), done, steps_per_epoch
        )
        monitor = "val_loss" if validation_data is not None else "loss"
        tuner = None
        if masked:  # a resumed run keeps the best.mask of its earlier epochs unless it does better
            tuner = MaskFineTuner(
                snapshot_dir=out_dir,
                monitor=monitor,
                initial_value_threshold=progress.best(monitor),
            )
        # The tuner comes first, so that the other callbacks see its figures;
        # `progress` saves before `backup`, so it never holds fewer epochs.
        callbacks = [c for c in (tuner, *callbacks, progress, backup) if c is not None]
        blocks = checkpointing.gradient_checkpointing(model) if gradient_checkpointing else None
        with warnings.catch_warnings(), blocks or contextlib.nullcontext():
            # A last epoch shorter than `steps_per_epoch` is planned, not a shortage.
            warnings.filterwarnings("ignore", "Your input ran out of data")
            model.fit(
                batches.dataset(start=done * steps_per_epoch),
                validation_data=validation_data,
                validation_batch_size=batch_size,
                steps_per_epoch=steps_per_epoch,
                epochs=epochs_planned,
                shuffle=False,
                callbacks=callbacks,
                verbose=verbose,
            )
        if tuner is not None and tuner.non_finite_loss_step is not None:
            raise FloatingPointError(
                f"The loss stopped being finite at step {tuner.non_finite_loss_step}, so training "
                "stopped. The masks of the best epoch before it are in best.mask if one finished."
            )
        result = {
            "learning_rate": learning_rate,
            "score_budget": budget,
            "updates": updates,
            "epochs": progress.epochs,
            "step_losses": progress.step_losses,
            "files": {},
        }
        if out_dir is not None:
            result["files"] = _finish(model, out_dir, initial_masks, result)
    return result


def _mask_configs(model):
    """The mask configs of the model's layers, less what a backup restores (where the scores began)."""
    configs = {getattr(layer, "mask_config", None) for layer in model._flatten_layers()}
    fields = [c.get_config() for c in configs if c is not None]
    fields = [{k: v for k, v in f.items() if k not in ("seed", "score_init")} for f in fields]
    return sorted(fields, key=json.dumps) or None


def _digest(data):
    """SHA-256 of the arrays of `(x, y, sample_weight)`, or None."""
    if data is None:
        return None
    x, *rest = data
    digest = hashlib.sha256()
    for array in [*(x[key] for key in sorted(x)), *rest]:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _finish(model, out_dir, initial_masks, result):
    """Writes the results, `history.json` last, then removes the backup."""
    files = {"training curve": os.path.join(out_dir, "training_curve.png")}
    if initial_masks is not None:
        files["masks"] = os.path.join(out_dir, "masks.mask")
        files["mask change"] = os.path.join(out_dir, "mask_change.png")
        if os.path.exists(os.path.join(out_dir, "best.mask")):
            files["best masks"] = os.path.join(out_dir, "best.mask")
        save_masks(model, files["masks"])
        plot.mask_change(initial_masks, masks_of(model), files["mask change"])
    plot.training_curve(result["step_losses"], files["training curve"])
    files["history"] = os.path.join(out_dir, HISTORY_FILE)
    write_json(files["history"], {key: result[key] for key in ("epochs", "step_losses")})
    shutil.rmtree(os.path.join(out_dir, BACKUP_DIR), ignore_errors=True)
    return files
