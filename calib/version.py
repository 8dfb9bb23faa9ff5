"""The one version of Mono2Stereo: ``pyproject.toml``'s, as the installed package metadata carries it.

``package.xml`` and the ROS package's ``setup.py`` repeat it (colcon reads those; a test keeps them equal).
Shown by every CLI's ``--version``, written into export metadata, engine sidecars and model cards.
"""

from __future__ import annotations

import re
from pathlib import Path

DISTRIBUTION = "mono2stereo"


def version() -> str:
    """The installed package's version; in a source tree without an install, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


__all__ = ["DISTRIBUTION", "version"]
