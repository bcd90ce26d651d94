"""The MFT paper's comparison at small scale: SmolLM2-135M-Instruct on GSM8K.

The paper fully fine-tunes a model (FFT), then learns masks on the fine-tuned
model with the same data and loss, and compares with continued FFT, untrained
random and L1-magnitude masks, LoRA, and MFT without the FFT stage. This
script runs every arm on the embedded model and GSM8K problems from PyPI
(`keras_mft.gsm8k`), plus the paper's two ablations (which band of 4 blocks,
which sparse ratio), and reports the held-out response loss, token accuracy
and greedy exact-match accuracy of each.

Each arm's result is written to `--results` (one JSON file per arm) as soon
as it is measured, and arms already there are skipped, so the run can be
stopped and continued, or split over several invocations with `--arms`. The
arms after `fft` start from the FFT weights kept in `--weights`; if those are
gone, FFT is trained again first. `--report` only prints the tables and draws
the plots.

    KERAS_BACKEND=tensorflow python benchmarks/reproduce.py           # every arm, about 3.2 hours on 2 cores
    KERAS_BACKEND=tensorflow python benchmarks/reproduce.py --arms base,fft
    python benchmarks/reproduce.py --report
"""

import argparse
import hashlib
import json
import pathlib
import statistics
import time

import keras
import numpy as np

import keras_mft
from keras_mft import evaluation
from keras_mft import protocol
from keras_mft import smollm2

SETTINGS = {
    "model": "smollm2_135m_instruct",  # --fast: "tiny", keras_mft.tiny_smollm2()
    "train_problems": 320,  # the first of keras_mft.gsm8k("train")
    "held_out_problems": 128,  # the first of keras_mft.gsm8k("held_out"), for the loss
    "exact_match_problems": 32,  # the first of those, answered greedily
    "max_new_tokens": 256,
    "sequence_length": 256,
    "batch_size": 8,
    "fft_epochs": 2,  # the FFT stage, and LoRA from the base model
    "epochs": 1,  # every arm that starts from the FFT model, and MFT from base
    "band": "4:8",  # the paper's best band for math on LLaMA2-7B
    "sparsity": 0.1,
    "learning_rate": 2e-5,
    "lora_rank": 64,
    "lora_alpha": 16,
}
SEEDS = (0, 1, 2)
BANDS = ("0:4", "4:8", "13:17", "26:30")
RATIOS = (0.01, 0.05, 0.1, 0.2)


def arm_names():
    """Every arm, in the order they run; those after `fft` start from it."""
    names = ["base", "fft"]
    names += [f"fft+mft/seed{seed}" for seed in SEEDS]
    names += [f"fft+continued_fft/seed{seed}" for seed in SEEDS]
    names += ["fft+random_mask", "fft+l1_mask", "lora", "mft_from_base"]
    names += [f"fft+mft/band{band}" for band in BANDS if band != SETTINGS["band"]]
    names += [f"fft+mft/ratio{ratio}" for ratio in RATIOS if ratio != SETTINGS["sparsity"]]
    return names


class Experiment:
    """The data, the cache and the base model shared by every arm."""

    def __init__(self, results, weights, settings):
        self.results = pathlib.Path(results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.fft_weights = pathlib.Path(weights) / "fft_backbone.weights.h5"
        self.fft_weights.parent.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.key = settings_key(settings)
        # Both models, full and tiny, use the tokenizer stored in SmolLM2's file.
        self.tokenizer = smollm2.tokenizer_from_gguf(smollm2.gguf_reader())
        train = first(keras_mft.gsm8k("train"), settings["train_problems"])
        held_out = first(keras_mft.gsm8k("held_out"), settings["held_out_problems"])
        length = settings["sequence_length"]
        self.train = keras_mft.instruction_dataset(self.tokenizer, train, sequence_length=length)
        self.held_out = keras_mft.instruction_dataset(self.tokenizer, held_out, sequence_length=length)
        self.questions = first(held_out, settings["exact_match_problems"])

    def result_path(self, arm):
        return self.results / f"{arm.replace('/', '_')}.json"

    def cached(self, arm):
        path = self.result_path(arm)
        if not path.exists():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["settings_key"] != self.key:
            raise SystemExit(
                f"{path} was measured with other settings or another backend. Use "
                "another --results directory, or delete that file to measure again."
            )
        return record

    def load_model(self):
        if self.settings["model"] == "tiny":
            return keras_mft.tiny_smollm2()
        return keras_mft.smollm2_135m_instruct()

    def base_model(self):
        model = self.load_model()
        model.preprocessor = None  # the data is already tokenized
        return model

    def fine_tune(self):
        """The FFT stage, from the base model; its weights are kept for later arms."""
        model = self.base_model()
        s = self.settings
        protocol.full_fine_tune(model, self.train, epochs=s["fft_epochs"], batch_size=s["batch_size"],
                                learning_rate=s["learning_rate"], verbose=0)
        model.backbone.save_weights(self.fft_weights)
        return model

    def fft_model(self):
        if not self.fft_weights.exists():
            print(f"No FFT weights in {self.fft_weights}: training FFT first.", flush=True)
            self.fine_tune()
        model = self.base_model()
        model.backbone.load_weights(self.fft_weights)
        return model

    def shuffled_train(self, seed):
        """The training sequences in a seed's order (KerasHub's fit keeps array order)."""
        order = np.random.default_rng(seed).permutation(len(self.train[1]))
        x, y, weights = self.train
        return {key: value[order] for key, value in x.items()}, y[order], weights[order]

    def evaluate(self, model):
        s = self.settings
        metrics = evaluation.response_loss(model, self.held_out, s["batch_size"])
        metrics.update(evaluation.exact_match(
            model, self.tokenizer, self.questions["prompts"], self.questions["responses"],
            template="chatml", end_token="<|im_end|>", max_new_tokens=s["max_new_tokens"],
            batch_size=s["batch_size"],
        ))
        return metrics

    def run(self, arm):
        """Trains and evaluates `arm`, and caches its result."""
        s = self.settings
        train = {"batch_size": s["batch_size"], "learning_rate": s["learning_rate"], "verbose": 0}
        start = time.time()
        mft = {"layers": s["band"], "sparsity": s["sparsity"], "seed": 0, "epochs": s["epochs"]}
        name, _, variant = arm.partition("/")
        if arm == "base":
            model = self.base_model()
        elif arm == "fft":
            model = self.fine_tune()
        elif name == "fft+mft":
            model = self.fft_model()
            data = self.train
            if variant.startswith("seed"):
                mft["seed"] = int(variant[4:])
                data = self.shuffled_train(mft["seed"])
            elif variant.startswith("band"):
                mft["layers"] = variant[4:]
            else:
                mft["sparsity"] = float(variant[5:])
            protocol.mask_fine_tune(model, data, **mft, **train)
        elif name == "fft+continued_fft":
            model = self.fft_model()
            data = self.shuffled_train(int(variant[4:]))
            protocol.full_fine_tune(model, data, epochs=s["epochs"], **train)
        elif arm in ("fft+random_mask", "fft+l1_mask"):
            model = self.fft_model()
            score_init = "random" if arm == "fft+random_mask" else "magnitude"
            protocol.untrained_mask(model, score_init, layers=s["band"], sparsity=s["sparsity"], seed=0)
        elif arm == "lora":
            model = self.base_model()
            protocol.lora_fine_tune(model, self.train, rank=s["lora_rank"], alpha=s["lora_alpha"],
                                    epochs=s["fft_epochs"], **train)
        elif arm == "mft_from_base":
            model = self.base_model()
            protocol.mask_fine_tune(model, self.train, **mft, **train)
        else:
            raise ValueError(f"Unknown arm {arm!r}.")
        record = {
            "arm": arm, "settings_key": self.key, "backend": keras.backend.backend(),
            "metrics": self.evaluate(model), "seconds": time.time() - start,
        }
        self.result_path(arm).write_text(json.dumps(record, indent=2), encoding="utf-8")
        return record


def settings_key(settings):
    """A short hash of the settings and the backend: results only mix when both match."""
    text = json.dumps({**settings, "backend": keras.backend.backend()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def first(data, count):
    return {key: values[:count] for key, values in data.items()}


def mean_and_spread(records, arm_prefix, metric):
    values = [r["metrics"][metric] for name, r in records.items() if name.startswith(arm_prefix + "/seed")]
    if len(values) < 2:
        return None
    return statistics.mean(values), statistics.stdev(values), len(values)


def report(records, images):
    """The main table, the seed comparison and the two ablation plots."""
    from matplotlib.figure import Figure

    metrics = ("loss", "accuracy", "exact_match")
    lines = ["| arm | held-out loss | token accuracy | exact match |", "|---|---:|---:|---:|"]
    for arm in arm_names():
        if arm in records:
            m = records[arm]["metrics"]
            lines.append(f"| {arm} | {m['loss']:.4f} | {m['accuracy']:.4f} | "
                         f"{m['exact_match']:.3f} ({m['correct']}/{m['total']}) |")
    print("\n".join(lines))
    print("\n| metric | FFT + MFT (mean +- sd) | FFT + continued FFT (mean +- sd) | difference | exceeds the seed spread |")
    print("|---|---:|---:|---:|---|")
    for metric in metrics:
        mft = mean_and_spread(records, "fft+mft", metric)
        cft = mean_and_spread(records, "fft+continued_fft", metric)
        if mft and cft:
            difference = mft[0] - cft[0]
            exceeds = abs(difference) > mft[1] + cft[1]
            print(f"| {metric} | {mft[0]:.4f} +- {mft[1]:.4f} (n={mft[2]}) | {cft[0]:.4f} +- {cft[1]:.4f} "
                  f"(n={cft[2]}) | {difference:+.4f} | {'yes' if exceeds else 'no'} |")
    sweeps = {
        "band": [(band, f"fft+mft/band{band}" if band != SETTINGS["band"] else "fft+mft/seed0")
                 for band in BANDS],
        "ratio": [(ratio, f"fft+mft/ratio{ratio}" if ratio != SETTINGS["sparsity"] else "fft+mft/seed0")
                  for ratio in RATIOS],
    }
    for sweep, points in sweeps.items():
        points = [(label, records[arm]["metrics"]["loss"]) for label, arm in points if arm in records]
        if not points or "fft" not in records:
            continue
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        axes = figure.subplots()
        labels = [str(label) for label, _ in points]
        axes.plot(labels, [loss for _, loss in points], marker="o", label="FFT + MFT")
        axes.axhline(records["fft"]["metrics"]["loss"], color="black", linestyle="--", label="FFT")
        axes.set_xlabel("blocks masked" if sweep == "band" else "sparse ratio (fraction removed)")
        axes.set_ylabel("held-out response loss")
        axes.legend()
        figure.savefig(pathlib.Path(images) / f"reproduction_{sweep}.png", dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", help="comma-separated arms to run (default: every arm not yet cached)")
    parser.add_argument("--results", default="docs/reproduction", help="one JSON file per arm")
    parser.add_argument("--weights", default="reproduction-weights", help="where the FFT weights are kept")
    parser.add_argument("--images", default="docs/images")
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the plots")
    parser.add_argument("--fast", action="store_true",
                        help="a tiny random model, a few examples and tokens, to test the script")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS)
    if args.fast:
        settings.update(model="tiny", train_problems=8, held_out_problems=4, exact_match_problems=2,
                        max_new_tokens=4, sequence_length=64, fft_epochs=1)
    arms = args.arms.split(",") if args.arms else arm_names()
    unknown = [arm for arm in arms if arm not in arm_names()]
    if unknown:
        raise SystemExit(f"Unknown arms {unknown}. Arms: {', '.join(arm_names())}")
    if not args.report:
        experiment = Experiment(args.results, args.weights, settings)
        for arm in arms:
            if experiment.cached(arm) is None:
                print(f"{arm}...", flush=True)
                record = experiment.run(arm)
                print(f"{arm}: {record['metrics']} in {record['seconds']:.0f} s", flush=True)
    records = {}
    for path in sorted(pathlib.Path(args.results).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["arm"]] = record
    report(records, args.images)


if __name__ == "__main__":
    main()
