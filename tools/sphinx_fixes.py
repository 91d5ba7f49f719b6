"""A local Sphinx extension: two fixes to how the book renders.

1. Test-harness markers stay out of the book. Code cells whose output nbval must not compare
   start with ``# NBVAL_IGNORE_OUTPUT``; readers do not need to see it, so the line is removed
   from the rendered code (the stored notebooks, and Colab, keep it).

2. A console error is removed from every page.

``tools/browser_check.py`` found every page throwing ``SyntaxError: Identifier 'THEBE_JS_URL'
has already been declared``: sphinx-thebe registers an inline ``<script>`` (``const
THEBE_JS_URL = ...``) after the HTML builder has started, and Sphinx 7.4 then lists it twice,
once as registered with the builder (file name ``None``) and once copied from the registry
(file name ``""``), which its de-duplication treats as different scripts. The same happens to
sphinx-togglebutton's inline ``var togglebuttonSelector = ...`` (harmless, ``var`` may be
redeclared). This extension drops such repeated scripts from each page before it is written.

Loaded through ``sphinx: local_extensions`` in ``_config.yml``.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes

NBVAL_MARKERS = (
    "# NBVAL_IGNORE_OUTPUT",
    "# NBVAL_SKIP",
    "# NBVAL_CHECK_OUTPUT",
    "# NBVAL_RAISES_EXCEPTION",
)


def strip_nbval_markers(app, doctree) -> None:
    """Remove nbval's marker comment from the first line of rendered code cells."""
    for block in doctree.findall(nodes.literal_block):
        text = block.astext()
        first, _, rest = text.partition("\n")
        if first.strip() in NBVAL_MARKERS:
            block.children = [nodes.Text(rest)]
            block.rawsource = rest


def _script_key(script: Any) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return (filename, getattr(script, "priority", None), tuple(sorted(attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of scripts that are equal up to ``None`` versus ``""`` as file name."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # the builder restores its own list after each page


def setup(app) -> dict[str, Any]:
    app.connect("doctree-read", strip_nbval_markers)
    # Run after every other handler, so that scripts added for this page are seen too.
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
