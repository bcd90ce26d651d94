"""The `keras-mft` command's start (also `python -m keras_mft`).

TensorFlow, which KerasHub always imports, writes C++ log lines straight to
the process's standard error when it loads (oneDNN and CUDA notices), and
`TF_CPP_MIN_LOG_LEVEL` does not stop the ones written before its logging
starts; a JAX built for CUDA does the same on a machine without a GPU. So,
unless `--verbose` is given, the command points file descriptor 2 at the
null device before Keras loads, and Python's `sys.stderr` (errors, tracebacks)
at a copy of the terminal's; it also ignores the Python warnings of Keras
and TensorFlow, which are not about what the user asked for.
"""

import os
import sys
import warnings


def main(argv=None):
    """Runs `keras-mft ARGV` (default: `sys.argv[1:]`); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in argv:
        quiet()
    from keras_mft import cli  # imports Keras: after `quiet`

    return cli.main(argv)


def quiet():
    """Sends what native code writes to standard error to the null device."""
    sys.stderr.flush()
    terminal = os.dup(2)  # not inherited: a child process gets fd 2 as restored
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="replace")
    warnings.simplefilter("ignore")
    # keras-mft's own warnings are about the user's input (data cut at
    # `--sequence-length`, ...): they stay.
    warnings.filterwarnings("default", module=r"keras_mft\.")


def unquiet():
    """Gives file descriptor 2 back to the terminal (before `exec` or a child process)."""
    if sys.stderr.fileno() != 2:
        sys.stderr.flush()
        os.dup2(sys.stderr.fileno(), 2)


if __name__ == "__main__":
    raise SystemExit(main())
