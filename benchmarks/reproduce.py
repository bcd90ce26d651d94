"""Does MFT help a fine-tuned model? The pre-registered comparison of docs/reproduction.md.

SmolLM2-135M-Instruct (embedded) is fully fine-tuned (FFT) on GSM8K problems
from PyPI, then each arm starts from it (or from the base model) and is scored
on every held-out problem alone: the mean response loss and token accuracy of
each problem, so that arms are compared problem by problem. The arms, in the
order they run (the most important first):

    fft                          full fine-tuning of the base model, 2 epochs
    mft/seed{0..4}               FFT + MFT at the paper's score budget (B = 0.47)
    mft_literal/seed0            FFT + MFT at the paper's literal learning rate (2e-5)
    continued_fft/seed{0,1,2}    FFT + 2 more epochs of FFT
    l1_mask, random_mask         FFT + an untrained mask
    mft_magnitude/seed{0..4}     FFT + MFT from magnitude-initialised scores, B = 0.47
    dose/B{0.05,0.15,1.5}        FFT + MFT at other budgets (seed 0; 0.47 is mft/seed0)
    lora_from_fft/lr{...}        FFT + LoRA (rank 64, alpha 16) at three learning rates
    lora_from_base               LoRA from the base model, at the rate chosen on validation
    base                         the base model, for context

Every arm is also scored on a validation part of the training problems; the
dose-response and LoRA's learning rate are read from it, never from the
held-out problems.

Each arm's result is written to `--results` (one JSON file per arm) as soon
as it is measured, and arms already there are skipped, so the run can be
stopped and continued, or split with `--arms`. Results measured with other
settings or another backend are refused, not mixed. `--report` prints the
tables and draws the forest plot and the dose-response plot.

    KERAS_BACKEND=tensorflow python benchmarks/reproduce.py            # every arm not yet measured
    KERAS_BACKEND=tensorflow python benchmarks/reproduce.py --arms fft,mft/seed0
    python benchmarks/reproduce.py --report
"""

import argparse
import dataclasses
import hashlib
import json
import pathlib
import time

import keras
import numpy as np

import keras_mft
from keras_mft import evaluation
from keras_mft import protocol
from keras_mft.data.instruction_data import padded_arrays
from keras_mft.data.instruction_data import tokenize_examples
from keras_mft.embedded import smollm2

SETTINGS = {
    "model": "smollm2_135m_instruct",  # --fast: "tiny", keras_mft.tiny_smollm2()
    "train_problems": 640,  # problems 0-639 of keras_mft.gsm8k("train")
    "validation_problems": 160,  # problems 640-799 of it
    "held_out_problems": 319,  # all of keras_mft.gsm8k("held_out")
    "sequence_length": 512,  # training sequences, packed: each holds the longest problem
    "score_length": 512,  # scored problems, one per row: holds the longest
    "batch_size": 4,  # 4 x 512 tokens a step: 8 x 512 outgrows 24 GB with TensorFlow
    "epochs": 2,  # every training arm
    "band": "4:8",  # the paper's best band for math on LLaMA2-7B
    "sparsity": 0.1,
    "score_budget": 0.47,  # the paper's math run
    "learning_rate": 2e-5,  # FFT, continued FFT, and MFT at the literal rate
    "lora_rank": 64,
    "lora_alpha": 16,
    "optimizer": "paper_adamw",  # keras_mft.training.optimizer.paper_optimizer and paper_loss
    # keras_mft.train: each epoch in a permutation drawn from the arm's seed. The arms
    # in docs/reproduction/ were measured before, in an order drawn once per arm.
    "data_order": "train",
}
# `--fast`: a tiny random model, a few problems and tokens, to test the scripts.
FAST_SETTINGS = {
    "model": "tiny",
    "train_problems": 8,
    "validation_problems": 4,
    "held_out_problems": 6,
    "sequence_length": 64,
    "score_length": 512,
    "epochs": 1,
}
MFT_SEEDS = (0, 1, 2, 3, 4)
CONTINUED_SEEDS = (0, 1, 2)
BUDGETS = (0.05, 0.15, 0.47, 1.5)
LORA_LEARNING_RATES = (1e-4, 3e-4, 1e-3)
BOOTSTRAP_RESAMPLES = 10_000


def arm_names():
    """Every arm, in the order they run."""
    names = ["fft"]
    names += [f"mft/seed{seed}" for seed in MFT_SEEDS]
    names += ["mft_literal/seed0"]
    names += [f"continued_fft/seed{seed}" for seed in CONTINUED_SEEDS]
    names += ["l1_mask", "random_mask"]
    names += [f"mft_magnitude/seed{seed}" for seed in MFT_SEEDS]
    names += [f"dose/B{budget}" for budget in BUDGETS if budget != SETTINGS["score_budget"]]
    names += [f"lora_from_fft/lr{rate}" for rate in LORA_LEARNING_RATES]
    names += ["lora_from_base", "base"]
    return names


class ScoreTravel(keras.callbacks.Callback):
    """How far the scores moved: the median |change| over the initial std."""

    def on_train_begin(self, logs=None):
        self.initial = np.concatenate([s.ravel() for s in keras_mft.scores_of(self.model).values()])

    def on_train_end(self, logs=None):
        final = np.concatenate([s.ravel() for s in keras_mft.scores_of(self.model).values()])
        self.median = float(np.median(np.abs(final - self.initial)) / np.std(self.initial))


class ArmResults:
    """One JSON file per arm in `results`; a file measured with other settings
    or on another backend is refused, not mixed."""

    def __init__(self, results, settings):
        self.results = pathlib.Path(results)
        self.results.mkdir(parents=True, exist_ok=True)
        self.key = settings_key(settings)

    def result_path(self, arm):
        return self.results / f"{arm.replace('/', '_')}.json"

    def cached(self, arm):
        path = self.result_path(arm)
        if not path.exists():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("settings_key") != self.key:
            raise SystemExit(
                f"{path} was measured with other settings or another backend. Use "
                "another --results directory, or delete that file to measure again."
            )
        return record

    def measured(self, arm, start, model, parts, batch_size, **extra):
        """The record of an arm trained since `start`: its settings key and
        backend, `extra`, and each part's per-example metrics (part name -> data)."""
        record = {
            "arm": arm,
            "settings_key": self.key,
            "backend": keras.backend.backend(),
            "train_seconds": time.time() - start,
            **extra,
        }
        for part_name, data in parts.items():
            metrics = evaluation.per_example_metrics(model, data, batch_size)
            record[part_name] = {key: value.tolist() for key, value in metrics.items()}
        return record

    def save(self, record, start):
        """Writes the arm's record, with the seconds since `start`."""
        record["seconds"] = time.time() - start
        self.result_path(record["arm"]).write_text(json.dumps(record), encoding="utf-8")


class Experiment(ArmResults):
    """The data, the cache and the models shared by every arm."""

    def __init__(self, results, weights, settings):
        super().__init__(results, settings)
        self.fft_weights = pathlib.Path(weights) / "fft_backbone.weights.h5"
        self.fft_weights.parent.mkdir(parents=True, exist_ok=True)
        self.settings = s = settings
        # Both models, full and tiny, use the tokenizer stored in SmolLM2's file.
        self.tokenizer = smollm2.tokenizer_from_gguf(smollm2.gguf_reader())
        problems = keras_mft.gsm8k("train")
        train = part(problems, 0, s["train_problems"])
        validation = part(
            problems, s["train_problems"], s["train_problems"] + s["validation_problems"]
        )
        held_out = part(keras_mft.gsm8k("held_out"), 0, s["held_out_problems"])
        self.train = concatenated_rows(
            tokenize_examples(self.tokenizer, "chatml", train["prompts"], train["responses"]),
            s["sequence_length"],
        )
        self.scored = {
            name: keras_mft.instruction_dataset(
                self.tokenizer,
                data,
                sequence_length=s["score_length"],
                template="chatml",
                pack=False,
            )
            for name, data in (("validation", validation), ("held_out", held_out))
        }
        for name, (x, _, _) in self.scored.items():
            if x["padding_mask"][:, -1].any():
                raise SystemExit(f"A {name} problem is longer than score_length: raise it.")

    def load_model(self):
        model = (
            keras_mft.tiny_smollm2()
            if self.settings["model"] == "tiny"
            else keras_mft.smollm2_135m_instruct()
        )
        model.preprocessor = None  # the data is already tokenized
        return model

    def fft_model(self):
        if not self.fft_weights.exists():
            print(f"No FFT weights in {self.fft_weights}: training FFT first.", flush=True)
            self.run("fft")
        model = self.load_model()
        model.backbone.load_weights(self.fft_weights)
        return model

    def lora_learning_rate(self):
        """LoRA's learning rate for `lora_from_base`, measuring the FFT arms it needs."""
        records = {}
        for rate in LORA_LEARNING_RATES:
            arm = f"lora_from_fft/lr{rate}"
            records[arm] = self.cached(arm) or self.run(arm)
        return chosen_lora_rate(records)

    def run(self, arm):
        """Trains and scores `arm`, and writes its result."""
        s = self.settings
        name, _, variant = arm.partition("/")
        seed = int(variant[4:]) if variant.startswith("seed") else 0
        train = {"batch_size": s["batch_size"], "epochs": s["epochs"], "seed": seed, "verbose": 0}
        band = keras_mft.MaskConfig(layers=s["band"], sparsity=s["sparsity"], seed=seed)
        start = time.time()
        extra = {}
        if arm == "base":
            model = self.load_model()
        elif arm == "fft":
            model = self.load_model()
            protocol.full_fine_tune(model, self.train, learning_rate=s["learning_rate"], **train)
            model.backbone.save_weights(self.fft_weights)
        elif name in ("mft", "mft_literal", "mft_magnitude", "dose"):
            rate = {"score_budget": s["score_budget"]}
            if name == "mft_literal":
                rate = {"learning_rate": s["learning_rate"]}
            elif name == "dose":
                rate = {"score_budget": float(variant[1:])}
            if name == "mft_magnitude":
                band = dataclasses.replace(band, score_init="magnitude")
            model = self.fft_model()
            travel = ScoreTravel()
            result = protocol.mask_fine_tune(
                model, self.train, band, callbacks=[travel], **rate, **train
            )
            extra = {
                "mask_changed": result["epochs"]["mask_changed"][-1],
                "score_budget": result["epochs"]["score_budget"][-1],
                "median_score_travel": travel.median,
            }
        elif name == "continued_fft":
            model = self.fft_model()
            protocol.full_fine_tune(model, self.train, learning_rate=s["learning_rate"], **train)
        elif arm in ("l1_mask", "random_mask"):
            model = self.fft_model()
            score_init = "magnitude" if arm == "l1_mask" else "random"
            protocol.untrained_mask(model, dataclasses.replace(band, score_init=score_init))
        elif name in ("lora_from_fft", "lora_from_base"):
            rate = float(variant[2:]) if variant else self.lora_learning_rate()
            model = self.fft_model() if name == "lora_from_fft" else self.load_model()
            protocol.lora_fine_tune(
                model,
                self.train,
                rank=s["lora_rank"],
                alpha=s["lora_alpha"],
                learning_rate=rate,
                **train,
            )
            extra = {"learning_rate": rate}
        else:
            raise ValueError(f"Unknown arm {arm!r}.")
        record = self.measured(arm, start, model, self.scored, s["batch_size"], **extra)
        self.save(record, start)
        return record


def measured_records(results):
    """Every arm's record in the folder `results`, by arm name."""
    records = {}
    for path in sorted(pathlib.Path(results).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["arm"]] = record
    return records


def settings_key(settings):
    """A short hash of the settings and the backend: results only mix when both match."""
    text = json.dumps({**settings, "backend": keras.backend.backend()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def chosen_lora_rate(records):
    """The rate of the `lora_from_fft` arm with the lowest validation loss (None if
    one is missing): the held-out problems play no part in the choice."""
    arms = {rate: records.get(f"lora_from_fft/lr{rate}") for rate in LORA_LEARNING_RATES}
    if None in arms.values():
        return None
    return min(arms, key=lambda rate: np.mean(arms[rate]["validation"]["loss"]))


def concatenated_rows(examples, sequence_length):
    """The pre-registered training rows: every example in ChatML without a
    system turn, concatenated in order and cut every `sequence_length` tokens
    (a problem may straddle two rows). `instruction_dataset` now packs whole
    examples instead; the arms keep the data they were registered with."""
    ids = np.concatenate([ids for ids, _ in examples])
    weights = np.concatenate([weights for _, weights in examples])
    window = sequence_length + 1
    starts = range(0, max(len(ids) - 1, 1), sequence_length)
    rows = [(ids[s : s + window], weights[s : s + window]) for s in starts]
    return padded_arrays(rows, window)


def part(data, start, stop):
    return {key: values[start:stop] for key, values in data.items()}


def paired_bootstrap(a, b, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """The mean paired difference of a and b, its 95% interval, and a one-sided p.

    Args:
        a, b: per-problem values, shaped (seeds, problems): each arm's seeds
            scored on the same problems.

    Each resample draws the problems with replacement (the same problems for
    both arms: the comparison is paired) and each arm's seeds with
    replacement, and computes mean(a) - mean(b) over them.

    Returns:
        `(difference, low, high, p)`: the difference on the data, the 2.5th
        and 97.5th percentiles of the resampled differences, and the
        one-sided p-value of "a is lower than b": the share of resamples
        with a difference of 0 or more, (1 + count) / (1 + resamples).
    """
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    problems = a.shape[1]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(problems, np.full(problems, 1.0 / problems), size=resamples)

    def resampled_means(values):
        by_seed = counts @ values.T / problems  # (resamples, seeds)
        seeds = rng.integers(0, values.shape[0], size=by_seed.shape)
        return np.take_along_axis(by_seed, seeds, axis=1).mean(axis=1)

    differences = resampled_means(a) - resampled_means(b)
    low, high = np.percentile(differences, [2.5, 97.5])
    p = (1 + np.sum(differences >= 0)) / (1 + resamples)
    return float(a.mean() - b.mean()), float(low), float(high), float(p)


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values, in their order."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    adjusted = np.empty_like(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def values(records, prefix, part_name="held_out", metric="loss"):
    """(seeds, problems) of the arms named `prefix` or `prefix/seed*`."""
    rows = [
        r[part_name][metric]
        for arm, r in sorted(records.items())
        if arm == prefix or arm.startswith(prefix + "/seed")
    ]
    return np.array(rows) if rows else None


def report(records, images):
    """The arms' table, the paired tests, the forest plot and the dose-response plot."""
    from matplotlib.figure import Figure

    pathlib.Path(images).mkdir(parents=True, exist_ok=True)

    print(
        "| arm | held-out loss | token accuracy | validation loss | mask changed | median score travel | minutes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm in arm_names():
        if arm in records:
            r = records[arm]
            changed = f"{r['mask_changed']:.4f}" if "mask_changed" in r else ""
            travel = f"{r['median_score_travel']:.3f}" if "median_score_travel" in r else ""
            print(
                f"| {arm} | {np.mean(r['held_out']['loss']):.4f} | {np.mean(r['held_out']['accuracy']):.4f} | "
                f"{np.mean(r['validation']['loss']):.4f} | {changed} | {travel} | {r['seconds'] / 60:.1f} |"
            )

    # LoRA from FFT is compared at the rate chosen on validation, as LoRA from base ran.
    rate = chosen_lora_rate(records)
    if rate is not None:
        losses = ", ".join(
            f"{r}: {np.mean(records[f'lora_from_fft/lr{r}']['validation']['loss']):.4f}"
            for r in LORA_LEARNING_RATES
        )
        print(f"\nLoRA's learning rate, chosen on validation loss ({losses}): {rate}")
    comparisons = [("mft", "fft"), ("mft", "continued_fft")]  # the pre-registered family
    others = ["mft_magnitude", "mft_literal", "continued_fft", "l1_mask", "random_mask"]
    others += [f"lora_from_fft/lr{rate}", "lora_from_base"]
    comparisons += [(arm, "fft") for arm in others]
    comparisons += [("mft", f"lora_from_fft/lr{rate}")]  # LoRA as a baseline for MFT
    rows = []
    for arm, reference in comparisons:
        a, b = values(records, arm), values(records, reference)
        if a is not None and b is not None:
            rows.append((arm, reference, len(a), len(b), *paired_bootstrap(a, b)))
    family = [row for row in rows if (row[0], row[1]) in comparisons[:2]]
    adjusted = dict(zip([(r[0], r[1]) for r in family], holm([r[-1] for r in family])))
    print(
        "\n| arm - reference (held-out loss) | seeds | difference | 95% interval | one-sided p | Holm p |"
    )
    print("|---|---|---:|---|---:|---:|")
    for arm, reference, n_a, n_b, difference, low, high, p in rows:
        holm_p = adjusted.get((arm, reference))
        print(
            f"| {arm} - {reference} | {n_a} vs {n_b} | {difference:+.4f} | [{low:+.4f}, {high:+.4f}] | "
            f"{p:.4f} | {'' if holm_p is None else f'{holm_p:.4f}'} |"
        )

    if rows:
        figure = Figure(figsize=(6.5, 0.45 * len(rows) + 1.2), layout="constrained")
        axes = figure.subplots()
        for y, (_, _, _, _, difference, low, high, _) in enumerate(reversed(rows)):
            axes.errorbar(
                difference, y, xerr=[[difference - low], [high - difference]], fmt="o", capsize=3
            )
        axes.set_yticks(range(len(rows)), [f"{r[0]} - {r[1]}" for r in reversed(rows)])
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_xlabel("paired difference in held-out response loss (95% interval)")
        figure.savefig(pathlib.Path(images) / "reproduction_forest.png", dpi=100)

    dose = [
        (budget, f"dose/B{budget}" if budget != SETTINGS["score_budget"] else "mft/seed0")
        for budget in BUDGETS
    ]
    dose = [
        (budget, np.mean(records[arm]["validation"]["loss"]))
        for budget, arm in dose
        if arm in records
    ]
    if dose and "fft" in records:
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        axes = figure.subplots()
        axes.plot(
            [b for b, _ in dose], [loss for _, loss in dose], marker="o", label="FFT + MFT (seed 0)"
        )
        seeds = values(records, "mft", "validation")
        if seeds is not None:  # how far the seed alone moves it, at the paper's budget
            axes.scatter(
                np.full(len(seeds), SETTINGS["score_budget"]),
                seeds.mean(axis=1),
                color="grey",
                s=12,
                zorder=3,
                label=f"FFT + MFT, {len(seeds)} seeds",
            )
        axes.axhline(
            np.mean(records["fft"]["validation"]["loss"]),
            color="black",
            linestyle="--",
            label="FFT",
        )
        axes.set_xscale("log")
        axes.set_xlabel("score budget B")
        axes.set_ylabel("validation response loss")
        axes.legend()
        figure.savefig(pathlib.Path(images) / "reproduction_dose.png", dpi=100)


def study_parser(description, results, weights):
    """The arguments of a study script (this one and `converged.py`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--arms", help="comma-separated arms to run (default: every arm not yet measured)"
    )
    parser.add_argument("--results", default=results, help="one JSON file per arm")
    parser.add_argument("--weights", default=weights, help="where the FFT weights are kept")
    parser.add_argument("--images", default="docs/images")
    parser.add_argument(
        "--report", action="store_true", help="only print the tables and draw the plots"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a tiny random model and a few examples, to test the script",
    )
    return parser


def main(argv=None):
    parser = study_parser(__doc__.split("\n\n")[0], "docs/reproduction", "reproduction-weights")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS)
    if args.fast:
        settings.update(FAST_SETTINGS)
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
                print(
                    f"{arm}: held-out loss {np.mean(record['held_out']['loss']):.4f} "
                    f"in {record['seconds'] / 60:.1f} min",
                    flush=True,
                )
    records = measured_records(args.results)
    report(records, args.images)


if __name__ == "__main__":
    main()
