"""Requests per second of keras-mft's lm-eval model against lm-eval's own `hf` model.

The same checkpoint (the model, exported with `keras_mft.export_to_transformers`
for `hf`), the same requests (the first `--questions` of ARC-Easy's offline
validation split, each answer option one log-likelihood request), one process
on the active backend. Each pass scores every request with `loglikelihood`,
tokenization included; passes run round-robin, each round starting with the
next model, so that all see the same machine noise. Round 0 is reported apart
as the first pass: on JAX and TensorFlow it includes compiling the forward
pass for each batch shape, which an lm-eval run pays once.

Models: keras-mft's `KerasMFTLM` on the model (`keras-mft`), on the same model
wrapped with masks in use on `--band` (`keras-mft, masks`: what
`keras-mft eval --masks` scores), and lm-eval's `HFLM` (`hf`: PyTorch,
transformers, float32 on the CPU). Target: keras-mft / hf >= 1.0.

    KERAS_BACKEND=jax python benchmarks/harness.py [--model smollm2|tiny] [--json FILE]
"""

import argparse
import json
import statistics
import tempfile
import time

import arms
import keras
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import keras_mft
from keras_mft.cli import OFFLINE_TASKS
from keras_mft.harness import KerasMFTLM

MODELS = {"smollm2": keras_mft.smollm2_135m_instruct, "tiny": keras_mft.tiny_smollm2}


def arc_easy_requests(questions):
    """lm-eval's log-likelihood requests for the first `questions` of ARC-Easy."""
    tasks = TaskManager(include_path=OFFLINE_TASKS, include_defaults=False)  # no index of all
    (task,) = tasks.load(["arc_easy_offline"])["tasks"].values()
    task.build_all_requests(limit=questions, rank=0, world_size=1)
    return task.instances


def build_models(name, band, batch_size, directory):
    model = MODELS[name]()
    keras_mft.export_to_transformers(model, directory)
    masked = keras_mft.wrap(MODELS[name](), layers=band, seed=0)
    settings = {"batch_size": batch_size, "max_length": 2048}
    return {
        "keras-mft": KerasMFTLM(model=model, **settings),
        "keras-mft, masks": KerasMFTLM(model=masked, **settings),
        "hf": HFLM(pretrained=directory, device="cpu", dtype="float32", **settings),
    }


def measure(models, requests, repeats):
    names = list(models)
    first, times = {}, {name: [] for name in names}
    for round_index in range(repeats + 1):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            begin = time.perf_counter()
            models[name].loglikelihood(requests, disable_tqdm=True)
            seconds = time.perf_counter() - begin
            if round_index:
                times[name].append(seconds)
            else:
                first[name] = seconds
    reference = len(requests) / statistics.median(times["hf"])
    rows = []
    for name in names:
        rate = len(requests) / statistics.median(times[name])
        rows.append(
            {
                "backend": keras.backend.backend(),
                "model": name,
                "requests": len(requests),
                "first_pass_per_second": round(len(requests) / first[name], 2),
                "per_second": round(rate, 2),
                "vs_hf": round(rate / reference, 3),
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--band", default="4:8", help="the blocks whose masks are in use")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    requests = arc_easy_requests(args.questions)
    with tempfile.TemporaryDirectory() as directory:
        models = build_models(args.model, args.band, args.batch_size, directory)
        rows = measure(models, requests, args.repeats)
    header = ["backend", "model", "requests", "first pass /s", "requests /s", "vs hf"]
    print(arms.markdown_table(header, [list(row.values()) for row in rows]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
