"""Writes each guide in examples/ as a page and a notebook of the site, at build time.

Run by mkdocs-gen-files (see mkdocs.yml); `guides.py` beside it turns a
guide into both.
"""

import pathlib
import sys

import mkdocs_gen_files
import nbformat

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # guides.py
import guides  # noqa: E402

for guide in guides.GUIDES:
    source = (guides.ROOT / "examples" / f"{guide}.py").read_text(encoding="utf-8")
    with mkdocs_gen_files.open(f"guides/{guide}.md", "w") as page:
        page.write(guides.guide_to_markdown(source, guide))
    with mkdocs_gen_files.open(f"guides/{guide}.ipynb", "w") as notebook:
        nbformat.write(guides.guide_to_notebook(source, guide), notebook)
