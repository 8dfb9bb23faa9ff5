"""Locate or fetch the real example data of Debian's ``opencv-doc`` package.

We do not commit third-party files. The data (Middlebury Aloe with GT disparity, 13 real
chessboard stereo pairs, ordinary photos) comes from, in order:

1. ``$M2S_OPENCV_DATA`` (a directory holding ``aloeL.jpg`` ...);
2. an installed ``opencv-doc`` (``/usr/share/doc/opencv-doc/examples/data``);
3. the cache ``$M2S_CACHE_DIR/opencv-doc`` (default ``~/.cache/mono2stereo/opencv-doc``), filled by
   :func:`fetch_opencv_examples`: ``apt-get download opencv-doc`` + extraction of the data folder only.

Run ``python -m calib.example_data fetch`` to fill the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from calib.errors import DataError

DEB_DATA_DIR = "usr/share/doc/opencv-doc/examples/data"
SYSTEM_DIR = Path("/") / DEB_DATA_DIR
# Files whose presence marks a usable data directory.
MARKERS = ("aloeL.jpg", "aloeR.jpg", "aloeGT.png", "left01.jpg", "right01.jpg")


def cache_root() -> Path:
    """``$M2S_CACHE_DIR``, default ``~/.cache/mono2stereo``: where fetched data sets live."""
    return Path(os.environ.get("M2S_CACHE_DIR") or Path.home() / ".cache" / "mono2stereo")


def cache_dir() -> Path:
    return cache_root() / "opencv-doc"


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A temporary work folder beside ``target``; whatever the caller leaves in ``work / "staged"`` replaces
    ``target`` when the block ends without an error, so an interrupted fetch never leaves a half-filled folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        work = Path(tmp)
        yield work
        if target.exists():
            shutil.rmtree(target)
        os.replace(work / "staged", target)


def _usable(directory: Path) -> bool:
    return all((directory / m).is_file() for m in MARKERS)


def find_opencv_examples() -> Path | None:
    """The example data directory, or None where it cannot be found (nothing is downloaded)."""
    env = os.environ.get("M2S_OPENCV_DATA")
    candidates = ([Path(env)] if env else []) + [SYSTEM_DIR, cache_dir() / DEB_DATA_DIR]
    for directory in candidates:
        if _usable(directory):
            return directory
    return None


def require_opencv_examples() -> Path:
    """The example data directory, or a :class:`DataError` that says how to get it."""
    found = find_opencv_examples()
    if found is None:
        raise DataError(
            "Debian opencv-doc example data not found; run 'python -m calib.example_data fetch' "
            "(needs apt-get), 'apt-get install opencv-doc', or set M2S_OPENCV_DATA to a folder with aloeL.jpg"
        )
    return found


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def download_deb(package: str, work: Path, apt_update: bool) -> Path:
    """``apt-get download PACKAGE`` into ``work``; the .deb file."""
    for tool in ("apt-get", "dpkg-deb", "tar"):
        if shutil.which(tool) is None:
            raise DataError(f"cannot fetch {package}: '{tool}' is not available (Debian/Ubuntu only)")
    result = _run(["apt-get", "download", package], work)
    if result.returncode != 0 and apt_update:
        _run(["apt-get", "update"], work)
        result = _run(["apt-get", "download", package], work)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise DataError(f"'apt-get download {package}' failed: {result.stderr.strip()[-500:]}")
    return debs[0]


def extract_deb(deb: Path, members: list[str], extract: Path) -> None:
    """Extract the members (tar wildcards, paths without the leading ./) of a .deb into ``extract``."""
    extract.mkdir(parents=True, exist_ok=True)
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(extract), "--wildcards", *(f"./{m}" for m in members)],
                         stdin=unpack.stdout, capture_output=True, text=True, check=False)
    if unpack.wait() != 0 or tar.returncode != 0:
        raise DataError(f"extracting {deb.name} failed: {tar.stderr.strip()[-500:]}")


def fetch_opencv_examples(apt_update: bool = False) -> Path:
    """Download ``opencv-doc`` with apt and extract its ``examples/data`` into the cache.

    The extraction goes to a temporary directory that is renamed into place, so an
    interrupted fetch never leaves a half-filled cache. ``apt_update`` runs ``apt-get update``
    once if the first download fails (needs root).
    """
    found = find_opencv_examples()
    if found is not None:
        return found
    target = cache_dir()
    with staged(target) as work:
        deb = download_deb("opencv-doc", work, apt_update)
        extract_deb(deb, [f"{DEB_DATA_DIR}/*"], work / "staged")
        if not _usable(work / "staged" / DEB_DATA_DIR):
            raise DataError(f"{deb.name} does not contain the expected files {', '.join(MARKERS)}")
    return target / DEB_DATA_DIR


def fetch_cli(argv: list[str] | None, *, prog: str, doc: str | None, what: str, find: Callable[[], Path | None],
              fetch: Callable[[bool], Path], describe: Callable[[Path], str] = str) -> int:
    """The ``fetch`` / ``where`` command line of a data set fetched from Debian packages."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help=f"find {what}, downloading the package(s) into the cache if needed")
    fetch_cmd.add_argument("--apt-update", action="store_true", help="run 'apt-get update' if a download fails")
    fetch_cmd.add_argument("--optional", action="store_true", help="exit 0 with a warning when it cannot be had")
    sub.add_parser("where", help="print the folder, or exit 1 if absent")
    args = parser.parse_args(argv)
    if args.command == "where":
        found = find()
        if found is None:
            print(f"error: {what} not found", file=sys.stderr)
            return 1
        print(found)
        return 0
    try:
        print(describe(fetch(args.apt_update)))
    except DataError as exc:
        print(f"{'warning' if args.optional else 'error'}: {exc}", file=sys.stderr)
        return 0 if args.optional else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return fetch_cli(argv, prog="python -m calib.example_data", doc=__doc__, what="the opencv-doc example data",
                     find=find_opencv_examples, fetch=fetch_opencv_examples)


if __name__ == "__main__":
    sys.exit(main())
