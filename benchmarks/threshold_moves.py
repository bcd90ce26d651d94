"""How far each mask's threshold moves in one MFT step, on the active backend.

A train step on a GPU starts each selection in the high bin of last step's
threshold (`keras_mft.masking.mask.select`) and runs the full search only when the
threshold left it. This trains MFT the way `reproduce.py` does (SmolLM2-135M,
blocks 4-7, ratio 0.1, the paper's optimiser at B = 0.47 spread over the
reproduction's 104 steps, its GSM8K training sequences) for the first
`--steps` steps, reads every masked matrix's threshold after each step (with
numpy, apart from the library), and prints how many bins it moved.

    KERAS_BACKEND=jax python benchmarks/threshold_moves.py --steps 32 [--json FILE]
"""

import argparse
import json

import keras
import numpy as np
import reproduce

import keras_mft
from keras_mft.masking.wrapping import masked_layers_of
from keras_mft.training import score_budget as budgets
from keras_mft.training.batches import Batches
from keras_mft.training.optimizer import compile_like_paper
from keras_mft.training.optimizer import paper_optimizer


def threshold(layer):
    """The bit pattern of the layer's `num_removed`-th smallest |score|."""
    keys = np.sort(np.abs(keras.ops.convert_to_numpy(layer.scores)).reshape(-1)).view(np.int32)
    return int(keys[layer.num_removed - 1])


class Thresholds(keras.callbacks.Callback):
    """Every masked matrix's threshold, before training and after each step."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.rows = [[threshold(layer) for layer in layers]]

    def on_train_batch_end(self, batch, logs=None):
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()  # JAX keeps the step's variables apart
        self.rows.append([threshold(layer) for layer in self.layers])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--fast", action="store_true", help="a tiny random model, to test this")
    parser.add_argument("--json", help="also write the thresholds to this JSON file")
    args = parser.parse_args(argv)
    settings = dict(reproduce.SETTINGS)
    if args.fast:
        settings.update(reproduce.FAST_SETTINGS)
    experiment = reproduce.Experiment("/tmp/threshold_moves", "/tmp/threshold_moves", settings)
    model = experiment.load_model()
    batch_size = settings["batch_size"]
    batches = Batches(experiment.train, batch_size, settings["epochs"], seed=0)
    total = batches.total_steps
    keras_mft.wrap(model, layers=settings["band"], sparsity=settings["sparsity"], seed=0)
    # The schedule of the whole run, of which the first `--steps` steps are taken.
    peak, _ = budgets.peak_learning_rate(total, budgets.score_std(model), settings["score_budget"])
    compile_like_paper(model, paper_optimizer(total, peak))
    recorder = Thresholds(masked_layers_of(model))
    model.fit(
        batches.dataset(), steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[recorder]
    )
    rows = np.array(recorder.rows)
    moved = np.abs((rows[1:] >> 16) - (rows[:-1] >> 16))
    steps, matrices = moved.shape
    print(f"{steps} steps of {total} x {matrices} matrices, B = {settings['score_budget']}")
    print("| high bins moved | matrix-steps | share |")
    print("|---:|---:|---:|")
    for bins in range(int(moved.max()) + 1):
        share = float(np.mean(moved == bins))
        print(f"| {bins} | {int(np.sum(moved == bins))} | {share:.1%} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"steps_in_run": total, "thresholds": rows.tolist()}, file)


if __name__ == "__main__":
    main()
