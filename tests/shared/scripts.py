"""The scripts in benchmarks/, imported and run in the test's own process."""

import contextlib
import importlib
import io
import json
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name):
    """The module of `benchmarks/NAME.py` (its own imports, like `arms`, resolved)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_benchmark(name, *arguments):
    """What `python benchmarks/NAME.py ARGUMENTS` prints, run in this process.

    It saves the ~6 s that a new process spends importing KerasHub. The child
    processes a script starts itself are still started.
    """
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        import_benchmark(name).main(list(arguments))
    return output.getvalue()


def arm_record(results, arm):
    """The record of `arm` that a study script wrote into the folder `results`."""
    return json.loads((pathlib.Path(results) / f"{arm.replace('/', '_')}.json").read_text())
