"""Turns each guide in examples/ into a page of the site, at build time.

A guide is a runnable `.py` file in the keras.io style: a header docstring
(the fields `Title:`, `Author:`, `Date created:`, `Last modified:`,
`Description:` and `Accelerator:`, in this order, then prose), code, and more
docstring blocks of prose between the code. The page keeps the prose as
Markdown and the code as Python blocks, in order. Run by mkdocs-gen-files
(see mkdocs.yml).
"""

import ast
import inspect
import pathlib

import mkdocs_gen_files

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


def guide_to_markdown(source, name):
    """The page of one guide: the header, then prose and code in file order."""
    lines = source.splitlines()
    header, *body = ast.parse(source).body
    header_text, _, intro = inspect.cleandoc(header.value.value).partition("\n\n")
    fields = header_fields(header_text, name)
    title = fields.pop("Title")
    # As keras.io shows them: one field a line.
    about = "<br>\n".join(f"**{field}:** {value}" for field, value in fields.items())
    # A guide that sets KERAS_BACKEND itself (the distributed one) runs on that backend only.
    chooses = (
        "`KERAS_BACKEND` chooses the backend." if 'environ["KERAS_BACKEND"] =' not in source else ""
    )
    parts = [
        f"# {title}",
        about,
        intro,
        f"Run it from a clone of the repository: `python examples/{name}.py`. {chooses}".strip(),
    ]
    code_from = header.end_lineno
    for node in body:
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            parts += [_code(lines[code_from : node.lineno - 1]), inspect.cleandoc(node.value.value)]
            code_from = node.end_lineno
    parts.append(_code(lines[code_from:]))
    return "\n\n".join(part for part in parts if part) + "\n"


def _code(lines):
    text = "\n".join(lines).strip("\n")
    return f"```python\n{text}\n```" if text.strip() else ""


for guide in GUIDES:
    source = (ROOT / "examples" / f"{guide}.py").read_text(encoding="utf-8")
    with mkdocs_gen_files.open(f"guides/{guide}.md", "w") as page:
        page.write(guide_to_markdown(source, guide))
