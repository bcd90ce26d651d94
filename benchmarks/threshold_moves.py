"""How far each mask's threshold moves in one MFT step, on the active backend.

A train step on a GPU starts each selection in the high bin of last step's
threshold (`keras_mft.mask.select`) and runs the full search only when the
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
from keras_mft import protocol
from keras_mft.wrapping import masked_layers_of


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
    x, y, weights = experiment.shuffled_train(0)
    batch_size = settings["batch_size"]
    total = protocol.total_steps(experiment.train, batch_size, settings["epochs"])
    keras_mft.wrap(model, layers=settings["band"], sparsity=settings["sparsity"], seed=0)
    protocol.compile_mask_fine_tuning(model, total, settings["score_budget"], None)
    recorder = Thresholds(masked_layers_of(model))
    count = args.steps * batch_size
    model.fit(
        {key: value[:count] for key, value in x.items()},
        y[:count],
        sample_weight=weights[:count],
        batch_size=batch_size,
        epochs=1,
        verbose=0,
        callbacks=[recorder],
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
