"""Release hygiene: one version everywhere, --version on every command, the licence and the changelog."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TEXT = (ROOT / "pyproject.toml").read_text()  # (no tomllib on Python 3.10, the robot-side leg)
VERSION = re.search(r'^version = "([^"]+)"', _TEXT, re.M).group(1)
SCRIPTS = dict(re.findall(r'^(m2s-[\w-]+) = "([\w.:]+)"', _TEXT.split("[project.scripts]")[1].split("\n[")[0], re.M))


def test_one_version_in_every_place_that_states_one():
    from calib.version import version

    pkg = (ROOT / "ros2_ws" / "src" / "m2s_stereo" / "package.xml").read_text()
    setup = (ROOT / "ros2_ws" / "src" / "m2s_stereo" / "setup.py").read_text()
    assert re.search(r"<version>([^<]+)</version>", pkg).group(1) == VERSION
    assert re.search(r'version="([^"]+)"', setup).group(1) == VERSION
    assert version() == VERSION  # what --version, export metadata and model cards report


def test_every_command_answers_version():
    assert len(SCRIPTS) >= 7, SCRIPTS
    for name, target in SCRIPTS.items():
        module = target.split(":")[0]
        res = subprocess.run([sys.executable, "-c", f"import sys; from {module} import main; "
                              f"sys.argv = ['{name}', '--version']; sys.exit(main())"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0 and VERSION in res.stdout, (name, res.stdout, res.stderr[-500:])


def test_licence_notice_and_changelog():
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert 'license = { text = "Apache-2.0" }' in _TEXT
    notice = (ROOT / "NOTICE").read_text()
    for third_party in ("IGEV", "OpenCV", "PyTorch", "ROS 2", "message_filters", "Fast DDS", "Depth Anything"):
        assert third_party in notice, third_party
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{VERSION}]" in changelog and "Keep a Changelog" in changelog


def test_node_help_lists_every_parameter():
    """The node takes ROS arguments only, yet `m2s-stereo-node --help` answers like the other commands: the
    usage and every parameter with its default (exit 0, nothing started)."""
    sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "m2s_stereo"))
    try:
        from m2s_stereo import params as P
    finally:
        sys.path.pop(0)
    res = subprocess.run([sys.executable, "-c", "import sys; from m2s_stereo.node_main import main; "
                          "sys.argv = ['m2s-stereo-node', '--help']; sys.exit(main())"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.startswith("usage: m2s-stereo-node"), res.stderr[-500:]
    for p in P.PARAMS:
        assert f"\n  {p.name} (default " in res.stdout, p.name
