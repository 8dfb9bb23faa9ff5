"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

The docstrings use Sphinx cross-reference roles (``:class:`X```, ``:func:`y```); mkdocstrings renders them as
text, so the API page showed ``:class:`` before every name. The role is dropped and the name kept as code.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):(?=<code>)")


def on_page_content(html: str, **_kwargs) -> str:
    return _ROLE.sub("", html)
