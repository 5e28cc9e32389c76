"""mkdocs-gen-files script: writes configuration/reference.md from the code's own declarations.

Runs inside `mkdocs build`; the repository root goes first on sys.path so the reference is rendered
from this checkout's robprune/schema.py and conf/, not from another installed copy."""
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robprune.reference import render_reference  # noqa: E402

with mkdocs_gen_files.open("configuration/reference.md", "w") as page:
    page.write(render_reference(ROOT / "conf"))
mkdocs_gen_files.set_edit_path("configuration/reference.md", "../robprune/reference.py")
