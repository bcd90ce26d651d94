"""The `keras-mft` command: demo, train, eval, bake and inspect.

    keras-mft demo                              # the main job, offline
    keras-mft train --data FILE.jsonl           # MFT on your data and model
    keras-mft eval --data FILE.jsonl [--masks FILE]
    keras-mft bake --masks FILE --out DIR [--format hf]
    keras-mft inspect FILE

`--backend` (or the `KERAS_BACKEND` environment variable) picks JAX, PyTorch
or TensorFlow. Without `--preset`, the model is the embedded
SmolLM2-135M-Instruct. Bad input ends the command with one line on stderr
saying what was wrong, and exit status 2 (arguments, some checked against
the loaded model) or 1 (everything else).
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import tomllib
import warnings

import keras
import keras_hub

from keras_mft import architectures
from keras_mft import evaluation
from keras_mft import score_budget as budgets
from keras_mft import selection as selections
from keras_mft.backup import CrashSafeBackupAndRestore
from keras_mft.batches import Batches
from keras_mft.chat_templates import TEMPLATES
from keras_mft.chat_templates import load_chat_template
from keras_mft.embedded.smollm2 import backbone_config
from keras_mft.embedded.smollm2 import gguf_reader
from keras_mft.embedded.smollm2 import smollm2_135m_instruct
from keras_mft.hf_export import export_to_transformers
from keras_mft.instruction_data import instruction_dataset
from keras_mft.instruction_data import read_jsonl
from keras_mft.mask_file import apply_masks
from keras_mft.mask_file import describe_masks
from keras_mft.mask_fine_tuner import MaskFineTuner
from keras_mft.preset import save_preset
from keras_mft.protocol import compile_mask_fine_tuning
from keras_mft.protocol import save_mask_fine_tuning
from keras_mft.protocol import total_steps
from keras_mft.version import __version__
from keras_mft.wrapping import SCORE_INITS
from keras_mft.wrapping import InvalidArgument
from keras_mft.wrapping import bake
from keras_mft.wrapping import masks_of
from keras_mft.wrapping import parse_layers
from keras_mft.wrapping import wrap

BACKENDS = ("jax", "torch", "tensorflow")
EMBEDDED = "the embedded SmolLM2-135M-Instruct"


class CommandError(Exception):
    """Bad input found by a command: printed as one line, exit status 1."""


class ArgumentError(CommandError):
    """A bad argument that only the loaded model reveals: exit status 2, as argparse's."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def main(argv=None):
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    argv = _with_config(parser, _renamed(sys.argv[1:] if argv is None else list(argv)))
    args = parser.parse_args(argv)
    if args.backend and args.backend != keras.backend.backend():
        # Keras reads KERAS_BACKEND once, when first imported: start again.
        environment = {**os.environ, "KERAS_BACKEND": args.backend}
        os.execve(sys.executable, [sys.executable, "-m", "keras_mft", *argv], environment)
    print(f"keras-mft {args.command} on {keras.backend.backend()}")
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("keras-mft: interrupted.", file=sys.stderr)
        return 130
    except ArgumentError as error:
        prog = f"keras-mft {args.command}"
        print(f"{prog}: error: {error} (see `{prog} --help`)", file=sys.stderr)
        return 2
    except (CommandError, ValueError, TypeError, ImportError) as error:
        print(f"keras-mft {args.command}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        print(
            f"keras-mft {args.command}: error: cannot use{where}: {error.strerror or error}",
            file=sys.stderr,
        )
        return 1
    return 0


# Flags renamed to the Python API's names; the old spellings work, with a
# warning, until the next minor release.
RENAMED = {"--lr": "--learning-rate", "--seq-len": "--sequence-length"}


def _renamed(argv):
    """`argv` with the renamed flags written the new way."""
    new = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        if flag in RENAMED:
            print(f"keras-mft: {flag} is deprecated, write {RENAMED[flag]}.", file=sys.stderr)
            arg = RENAMED[flag] + equals + value
        new.append(arg)
    return new


def build_parser():
    parser = _Parser(
        prog="keras-mft",
        description="Mask Fine-Tuning for KerasHub language models.",
    )
    parser.add_argument("--version", action="version", version=f"keras-mft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = _command(
        commands,
        "demo",
        run_demo,
        "MFT of the embedded SmolLM2-135M on GSM8K, offline, with a table and plots.",
    )
    demo.add_argument(
        "--out", default="keras-mft-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument(
        "--train-examples",
        type=_positive_int,
        default=224,
        help="GSM8K problems to train on (default: %(default)s)",
    )
    demo.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=64,
        help="held-out GSM8K problems to evaluate on (default: %(default)s)",
    )
    demo.add_argument(
        "--layers",
        type=_layers,
        default="4:8",
        help="band of blocks to mask (default: %(default)s)",
    )
    demo.add_argument(
        "--sequence-length",
        type=_positive_int,
        default=512,
        help="tokens per training sequence (default: %(default)s)",
    )
    _learning_rate_arguments(demo)
    demo.add_argument(
        "--seed", type=_seed, default=0, help="seed of the initial scores (default: %(default)s)"
    )

    train = _command(
        commands, "train", run_train, "Learn masks for your model on prompt/response JSONL data."
    )
    _model_arguments(train)
    _data_arguments(train, sequence_length=512)
    train.add_argument(
        "--layers",
        type=_layers,
        help="blocks to mask: a band 'start:stop', indices '1,5,9' or 'all' "
        "(default: 0:4, or all blocks if the model has fewer)",
    )
    train.add_argument(
        "--targets",
        type=_targets,
        help="projections to mask, comma-separated: aliases 'q,v,down', KerasHub layer "
        "names or Hugging Face names 'q_proj,v_proj' (default: all of the model's, "
        "q,k,v,o,gate,up,down for Llama)",
    )
    train.add_argument(
        "--sparsity",
        type=_sparsity,
        help="fraction of each matrix removed (default: 0.1)",
    )
    train.add_argument(
        "--attention-sparsity", type=_sparsity, help="overrides --sparsity for q, k, v, o"
    )
    train.add_argument(
        "--mlp-sparsity", type=_sparsity, help="overrides --sparsity for gate, up, down"
    )
    train.add_argument(
        "--selection",
        type=_selection,
        default="per_matrix",
        help="how the removed weights are chosen: 'per_matrix' (the paper), 'global' or "
        "'N:M' such as '2:4' (default: %(default)s)",
    )
    train.add_argument(
        "--score-init",
        choices=SCORE_INITS,
        default="random",
        help="initial scores: 'random' (the paper) or 'magnitude' (the first mask is the "
        "L1-magnitude mask) (default: %(default)s)",
    )
    train.add_argument("--epochs", type=_positive_int, default=2, help="(default: %(default)s)")
    train.add_argument(
        "--gradient-accumulation-steps",
        type=_positive_int,
        default=1,
        help="average the gradients of this many batches in each update, so that "
        "--batch-size times it is the batch the optimizer sees (default: %(default)s)",
    )
    _learning_rate_arguments(train)
    train.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the initial scores and of the data order (default: %(default)s)",
    )
    train.add_argument(
        "--steps-per-epoch",
        type=_positive_int,
        help="end a Keras epoch every N steps: validation, logs, best.mask and the backup "
        "then come every N steps instead of once per pass over --data",
    )
    train.add_argument(
        "--out", default="keras-mft-train", help="output directory (default: %(default)s)"
    )
    validation = train.add_mutually_exclusive_group()
    validation.add_argument(
        "--val-data", help="JSONL file of validation records, scored at each epoch's end"
    )
    validation.add_argument(
        "--val-fraction",
        type=_fraction,
        help="score the last fraction of --data's records instead of training on them",
    )
    train.add_argument(
        "--log-dir",
        help="write TensorBoard logs and training.csv here: the losses and MaskFineTuner's figures",
    )
    train.add_argument(
        "--config",
        help="a TOML file whose keys are these flags' names (learning_rate = 2e-5, "
        "targets = ['q', 'v'], ...); flags given on the command line override it",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last backup",
    )

    evaluate = _command(
        commands, "eval", run_eval, "Held-out response loss of a model, with or without masks."
    )
    _model_arguments(evaluate)
    _data_arguments(evaluate, sequence_length=512)
    evaluate.add_argument("--masks", help="a mask file to apply before evaluating")

    bake_command = _command(
        commands, "bake", run_bake, "Multiply a mask file into a model and save a plain preset."
    )
    _model_arguments(bake_command)
    bake_command.add_argument("--masks", required=True, help="the mask file")
    bake_command.add_argument("--out", required=True, help="the directory to write")
    bake_command.add_argument(
        "--format",
        choices=("keras", "hf"),
        default="keras",
        help="keras: a KerasHub preset (the default); hf: a Hugging Face transformers "
        "checkpoint with its tokenizer",
    )

    generate = _command(
        commands,
        "generate",
        run_generate,
        "Greedy answers of the model without and with its masks, side by side.",
    )
    _model_arguments(generate)
    generate.add_argument("--masks", required=True, help="the mask file")
    generate.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="a user message; repeat the flag for several",
    )
    generate.add_argument("--system", help="a system prompt for every message")
    _template_arguments(generate)
    generate.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=64,
        help="longest answer, in tokens (default: %(default)s)",
    )

    inspect = _command(commands, "inspect", run_inspect, "Show what a mask file holds.")
    inspect.add_argument(
        "mask_file", help="a file written by `keras-mft train` or `keras_mft.save_masks`"
    )
    parser.commands = {"train": train}
    return parser


def _command(commands, name, run, help_text):
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: KERAS_BACKEND, else Keras' own default)",
    )
    command.set_defaults(run=run)
    return command


def _learning_rate_arguments(command):
    rate = command.add_mutually_exclusive_group()
    rate.add_argument(
        "--score-budget",
        type=_positive_float,
        help="the score budget B: the sum of the learning rates over all steps, "
        "over the std of the initial scores; sets the peak learning rate "
        f"(default: {budgets.DEFAULT_BUDGET}, the paper's math run)",
    )
    rate.add_argument(
        "--learning-rate",
        type=_positive_float,
        help="the peak learning rate, instead of --score-budget "
        "(the paper's literal value is 2e-5)",
    )


def _model_arguments(command):
    command.add_argument(
        "--preset",
        help="a KerasHub preset handle or a local preset directory "
        f"(KerasHub or Hugging Face format); default: {EMBEDDED}",
    )


def _data_arguments(command, sequence_length):
    command.add_argument(
        "--data",
        required=True,
        help='JSONL file, one {"messages": [...]} or {"prompt": ..., "response": ...} '
        '(or "completion") per line',
    )
    _template_arguments(command)
    command.add_argument(
        "--sequence-length",
        type=_positive_int,
        default=sequence_length,
        help="tokens per sequence (default: %(default)s)",
    )
    command.add_argument(
        "--batch-size", type=_positive_int, default=8, help="(default: %(default)s)"
    )


def _template_arguments(command):
    template = command.add_mutually_exclusive_group()
    template.add_argument(
        "--template",
        choices=sorted(TEMPLATES),
        help="a hand-written chat format (default: the model's own template, else the "
        "format its special tokens name)",
    )
    template.add_argument(
        "--chat-template",
        metavar="FILE",
        help="the model's Jinja chat template: a .jinja file or a tokenizer_config.json "
        "(default: the preset directory's tokenizer_config.json, if it has one)",
    )


def _checked(convert, valid, expected):
    """An argparse type: `convert(text)`, refused with "expected ..." unless `valid`."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda value: value >= 1, "a positive integer")
_positive_float = _checked(
    float, lambda value: value > 0 and math.isfinite(value), "a positive number"
)
_sparsity = _checked(float, lambda value: 0.0 <= value < 1.0, "a fraction in [0, 1)")
_seed = _checked(int, lambda value: value >= 0, "a non-negative integer")
_fraction = _checked(float, lambda value: 0.0 < value < 1.0, "a fraction in (0, 1)")


def _layers(text):
    """A band 'start:stop', 'all', or block indices '1,5,9' (checked against the model later)."""
    if text == "all" or ":" in text:
        return text
    try:
        return [int(index) for index in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"write a band 'start:stop', block indices '1,5,9' or 'all', got {text!r}"
        ) from None


def _targets(text):
    """Projection names, comma-separated (checked against the model later)."""
    targets = text.split(",")
    known = set(architectures.ALIASES) | set(architectures.HF_NAMES)
    for names in architectures.LAYER_NAMES.values():
        known.update(names.values())
    unknown = [target for target in targets if target not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown projections {unknown}: use the aliases {','.join(architectures.ALIASES)}, "
            "the model's KerasHub layer names or Hugging Face names (q_proj, ...), comma-separated"
        )
    return targets


def _selection(text):
    try:
        selections.get(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _with_config(parser, argv):
    """`argv` with `train --config FILE`'s settings put first, so that flags override them."""
    if not argv or argv[0] != "train":
        return argv
    path = None
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if path is None:
        return argv
    train = parser.commands["train"]
    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        train.error(f"argument --config: cannot read {path}: {error}")
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if flag not in train._option_string_actions or key in ("config", "backend"):
            train.error(f"argument --config: {path} sets {key!r}, which is not a train flag")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return [argv[0], *flags, *argv[1:]]


def run_demo(args):
    from keras_mft.embedded.demo import run_demo as demo

    # The embedded model's depth is in its file's metadata: no need to load it.
    _check_layers(args.layers, backbone_config(gguf_reader())["num_layers"])
    print(f"Writing to {os.path.abspath(args.out)}")
    outcome = demo(
        args.out,
        train_examples=args.train_examples,
        eval_examples=args.eval_examples,
        layers=args.layers,
        sequence_length=args.sequence_length,
        score_budget=args.score_budget,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    print()
    print(outcome["table"])
    print(f"\nFinished in {outcome['seconds'] / 60:.1f} min. Wrote:")
    for what, path in outcome["files"].items():
        print(f"  {what:15} {path}")


def run_train(args):
    backup_dir = os.path.join(args.out, "backup")
    if os.path.exists(backup_dir) and not args.resume:
        raise CommandError(
            f"{args.out} holds an interrupted run: pass --resume to continue it, "
            "or choose another --out."
        )
    if args.resume and not os.path.exists(backup_dir):
        raise CommandError(f"--resume: {args.out} holds no interrupted run to continue.")
    finished = [
        name for name in ("masks.mask", "best.mask") if os.path.exists(os.path.join(args.out, name))
    ]
    if finished and not args.resume:
        raise CommandError(
            f"{args.out} holds a finished run ({', '.join(finished)}): choose another --out, "
            "or move those files away to train there again."
        )
    settings = _settings(args)
    config_path = os.path.join(args.out, "config.json")
    if args.resume and os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as file:
            saved = json.load(file)
        changed = [
            f"{key} {saved.get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if saved.get(key) != value
        ]
        if changed:
            raise CommandError(
                f"--resume: these settings differ from the interrupted run's ({config_path}): "
                f"{'; '.join(changed)}. Resume with the same settings."
            )
    if args.log_dir and importlib.util.find_spec("tensorboard") is None:
        raise CommandError(
            "--log-dir writes TensorBoard logs, which need the tensorboard package: "
            "pip install tensorboard (or keras-mft[tensorboard])."
        )
    records = read_jsonl(args.data)
    validation_records = read_jsonl(args.val_data) if args.val_data else None
    if args.val_fraction:
        records, validation_records = _split(records, args.val_fraction)
    model = _load_model(args.preset)
    try:  # before the data is read: the model checks the arguments it alone can
        wrap(
            model,
            layers=args.layers,
            targets=args.targets,
            sparsity=args.sparsity,
            attention_sparsity=args.attention_sparsity,
            mlp_sparsity=args.mlp_sparsity,
            selection=args.selection,
            score_init=args.score_init,
            seed=args.seed,
        )
    except InvalidArgument as error:
        raise ArgumentError(f"argument --{error.argument.replace('_', '-')}: {error}") from None
    tokenizer = _detach_tokenizer(model, args.preset)
    data = _dataset(tokenizer, records, args)
    validation = _dataset(tokenizer, validation_records, args) if validation_records else None
    steps = total_steps(data, args.batch_size, args.epochs)
    accumulation = args.gradient_accumulation_steps
    learning_rate, budget = compile_mask_fine_tuning(
        model,
        steps,
        args.score_budget,
        args.learning_rate,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    print(
        f"{steps // accumulation} updates of {args.batch_size * accumulation} sequences, "
        f"peak learning rate {learning_rate:.3g}: score budget B = {budget:.3g}."
    )
    os.makedirs(args.out, exist_ok=True)
    if not args.resume:
        with open(config_path, "w", encoding="utf-8") as file:
            json.dump(settings, file, indent=2)
    initial_masks = masks_of(model)
    progress = _Progress(os.path.join(backup_dir, "progress.json"))
    monitor = "val_loss" if validation else "loss"
    # A resumed run keeps the best.mask of its earlier epochs unless it does better.
    best_so_far = progress.saved_best(monitor) if args.resume else None
    tuner = MaskFineTuner(
        snapshot_dir=args.out, monitor=monitor, initial_value_threshold=best_so_far
    )
    # The loggers come after the tuner, so they see the figures it adds to the logs.
    loggers = []
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
        loggers = [
            keras.callbacks.TensorBoard(args.log_dir, write_graph=False),
            keras.callbacks.CSVLogger(
                os.path.join(args.log_dir, "training.csv"), append=args.resume
            ),
        ]
    # The whole training state is backed up at each (Keras) epoch's end and,
    # after an interruption, training restarts from there on the batches that
    # would have come next. `progress` saves before `backup`, so it never
    # holds fewer epochs.
    backup = CrashSafeBackupAndRestore(backup_dir)
    batches = Batches(data, args.batch_size, args.epochs, args.seed)
    steps_per_epoch = args.steps_per_epoch or batches.steps_per_pass
    with warnings.catch_warnings():
        # A last epoch shorter than `steps_per_epoch` is planned, not a shortage.
        warnings.filterwarnings("ignore", "Your input ran out of data")
        model.fit(
            batches.dataset(start=backup.epochs_done() * steps_per_epoch),
            validation_data=validation,
            validation_batch_size=args.batch_size,
            steps_per_epoch=steps_per_epoch,
            epochs=math.ceil(batches.total_steps / steps_per_epoch),
            shuffle=False,
            callbacks=[tuner, *loggers, progress, backup],
        )
    losses = progress.step_losses
    if tuner.non_finite_loss_step is not None:
        raise CommandError(
            f"the loss stopped being finite at step {tuner.non_finite_loss_step}, so "
            f"training stopped. The masks of the best epoch before it are in "
            f"{os.path.join(args.out, 'best.mask')} if one finished."
        )
    masks_path = save_mask_fine_tuning(model, args.out, initial_masks, losses)["masks"]
    with open(os.path.join(args.out, "history.json"), "w", encoding="utf-8") as file:
        json.dump({"epochs": progress.epochs, "step_losses": losses}, file, indent=2)
    print(
        f"Wrote {masks_path} (the final masks), best.mask (lowest epoch {monitor}), "
        f"history.json and two plots into {args.out}."
    )
    print(
        f"Bake them into a preset with: keras-mft bake --masks {masks_path} --out DIR"
        + (f" --preset {args.preset}" if args.preset else "")
    )


class _Progress(keras.callbacks.Callback):
    """The per-epoch logs and the loss of each step, kept across `--resume`.

    Saved to `path` at each epoch's end; a resumed run reads them back, up
    to the epoch it resumes from, so `history.json` covers the whole run.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.epochs, self.step_losses = {}, []

    def saved_best(self, key):
        """The lowest `key` of the epochs saved so far, or None."""
        if not os.path.exists(self.path):
            return None
        with open(self.path, encoding="utf-8") as file:
            values = json.load(file)["epochs"].get(key)
        return min(values) if values else None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0 and not self.step_losses and os.path.exists(self.path):
            # The first epoch of a resumed run: the backup restored `epoch` epochs.
            with open(self.path, encoding="utf-8") as file:
                saved = json.load(file)
            self.epochs = {key: values[:epoch] for key, values in saved["epochs"].items()}
            self.step_losses = saved["step_losses"][: epoch * self.params["steps"]]

    def on_train_batch_end(self, batch, logs=None):
        self.step_losses.append(float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.epochs.setdefault(key, []).append(float(value))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"epochs": self.epochs, "step_losses": self.step_losses}, file)
        os.replace(temporary, self.path)


def run_eval(args):
    records = read_jsonl(args.data)
    model = _load_model(args.preset)
    data = _dataset(_detach_tokenizer(model, args.preset), records, args)
    if args.masks:
        apply_masks(model, args.masks)
    name = args.preset or EMBEDDED
    metrics = evaluation.response_loss(model, data, args.batch_size, verbose=True)
    arm = name + (f" + {args.masks}" if args.masks else "")
    print(evaluation.results_table({arm: metrics}))


def run_bake(args):
    if os.path.exists(args.out) and not (os.path.isdir(args.out) and not os.listdir(args.out)):
        raise CommandError(
            f"--out {args.out} already exists and is not empty: bake writes a new preset and "
            "never replaces files. Choose a new directory."
        )
    model = _load_model(args.preset)
    apply_masks(model, args.masks)
    bake(model)
    if args.format == "hf":
        export_to_transformers(model, args.out)
        print(
            f"Wrote the baked Hugging Face checkpoint {args.out}. Load it with "
            f"transformers.AutoModelForCausalLM.from_pretrained({args.out!r}) and "
            f"AutoTokenizer.from_pretrained({args.out!r})."
        )
        return
    save_preset(model, args.out)
    print(
        f"Wrote the baked preset {args.out}. Load it with "
        f"keras_hub.models.CausalLM.from_preset({args.out!r}) after `import keras_mft`."
    )


def run_generate(args):
    model = _load_model(args.preset)
    tokenizer = model.preprocessor.tokenizer if model.preprocessor else None
    if tokenizer is None:
        raise CommandError(f"the preset {args.preset!r} has no tokenizer to write answers with.")

    def answers():
        return evaluation.greedy_generate(
            model,
            tokenizer,
            args.prompt,
            template=args.template,
            chat_template=_chat_template(args),
            system=args.system,
            max_new_tokens=args.max_new_tokens,
        )

    columns = {"base model": answers()}
    apply_masks(model, args.masks)
    columns["with the masks (wrapped)"] = answers()
    bake(model)
    columns["baked"] = answers()
    for number, prompt in enumerate(args.prompt):
        print(f"\n## Prompt {number + 1}: {prompt}")
        for name, texts in columns.items():
            print(f"\n{name}:\n{texts[number]}")


def run_inspect(args):
    records = describe_masks(args.mask_file)
    weights = sum(math.prod(record["shape"]) for record in records)
    removed = sum(record["num_removed"] for record in records)
    size = os.path.getsize(args.mask_file)
    print("| kernel | shape | weights | removed | sparsity |")
    print("|---|---|---:|---:|---:|")
    for record in records:
        count = math.prod(record["shape"])
        print(
            f"| {record['path']} | {'x'.join(map(str, record['shape']))} | {count:,} "
            f"| {record['num_removed']:,} | {record['num_removed'] / count:.4f} |"
        )
    print(
        f"\n{len(records)} masked kernels, {weights:,} weights, {removed:,} removed "
        f"({removed / weights:.4f})."
    )
    print(
        f"{args.mask_file}: {size:,} bytes on disk ({8 * size / weights:.3f} bits per masked weight)."
    )


def _load_model(preset):
    """The `CausalLM` of `preset` (default: the embedded SmolLM2), with its preprocessor."""
    if preset is None:
        model = smollm2_135m_instruct()
    else:
        try:
            model = keras_hub.models.CausalLM.from_preset(preset)
        except Exception as error:  # KerasHub, the hubs and the file system raise many kinds.
            raise CommandError(
                f"cannot load the preset {preset!r} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Give a KerasHub "
                "preset handle or a local directory holding a KerasHub preset or a "
                "Hugging Face checkpoint."
            ) from None
    return model


def _settings(args):
    """The run's resolved settings: every train flag but those that only say how to run it."""
    skip = ("run", "command", "backend", "config", "resume")
    return {key: value for key, value in vars(args).items() if key not in skip}


def _split(records, fraction):
    """The records before and after the last `fraction` of them (at least one each)."""
    count = len(next(iter(records.values())))  # prompts, or messages
    held = min(max(1, round(count * fraction)), count - 1)
    if held < 1:
        raise ArgumentError("argument --val-fraction: --data holds one record, too few to split")
    train = {key: values[: count - held] for key, values in records.items()}
    validation = {key: values[count - held :] for key, values in records.items()}
    return train, validation


def _check_layers(layers, num_blocks):
    try:
        return parse_layers(layers, num_blocks)
    except ValueError as error:
        raise ArgumentError(f"argument --layers: {error}") from None


def _detach_tokenizer(model, preset):
    """Returns the model's tokenizer and detaches its preprocessor: it then takes token ids."""
    if model.preprocessor is None:
        raise CommandError(
            f"the preset {preset!r} has no tokenizer; keras-mft needs one to read the data."
        )
    tokenizer = model.preprocessor.tokenizer
    model.preprocessor = None
    return tokenizer


def _chat_template(args):
    """--chat-template's file, else a Hugging Face checkpoint's own template, else None."""
    path = args.chat_template
    if path is None and args.template is None and args.preset and os.path.isdir(args.preset):
        config = os.path.join(args.preset, "tokenizer_config.json")
        if os.path.exists(config):
            try:
                return load_chat_template(config)
            except ValueError:
                return None  # a checkpoint without a template: the fallbacks decide
    return load_chat_template(path) if path else None


def _dataset(tokenizer, records, args):
    return instruction_dataset(
        tokenizer,
        records,
        sequence_length=args.sequence_length,
        template=args.template,
        chat_template=_chat_template(args),
    )
