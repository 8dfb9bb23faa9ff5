"""More photographs to synthesize from: freely licensed photos that Debian packages ship.

The opencv-doc example photos are 56 pictures, many of them test charts and renders. The CPU recipe
(#29) adds the photographs of two Debian wallpaper packages, fetched like the opencv-doc data (``apt-get
download`` and extraction of the listed files only; never a hub download):

- ``mate-backgrounds``: the 12 photos of ``usr/share/backgrounds/mate/nature`` (GPL-2+);
- ``plasma-workspace-wallpapers``: the 12 wallpapers that are photographs, not renders (GPL-2+ in
  ``debian/copyright``; each wallpaper's ``metadata.json`` names its author and licence).

The photos land in ``$M2S_CACHE_DIR/photos`` (default ``~/.cache/mono2stereo/photos``) as one flat folder,
with ``SOURCES.md`` and ``sources.json`` that record, for every file, the package and version it came
from, its path there, its copyright holders and its licence. The folder is filled in a temporary
directory and renamed into place, so an interrupted fetch leaves no half set.

    python -m m2s_train.synth.photo_sets fetch      # download (needs apt-get) or find them
    python -m m2s_train.synth.photo_sets where      # print the folder, exit 1 if absent
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from calib.errors import DataError
from calib.example_data import cache_root, download_deb, extract_deb, fetch_cli, staged

MATE_NATURE = "usr/share/backgrounds/mate/nature"
PLASMA = "usr/share/wallpapers"


@dataclass(frozen=True)
class PhotoSet:
    package: str
    photos: tuple[str, ...]  # paths inside the package (a folder: its largest image)
    copyright_file: str


PHOTO_SETS = (
    PhotoSet("mate-backgrounds", tuple(f"{MATE_NATURE}/{n}.jpg" for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")), "usr/share/doc/mate-backgrounds/copyright"),
    PhotoSet("plasma-workspace-wallpapers", tuple(f"{PLASMA}/{n}" for n in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
        "OneStandsOut", "Path", "summer_1am", "Volna")), "usr/share/doc/plasma-workspace-wallpapers/copyright"),
)


def photos_dir() -> Path:
    return cache_root() / "photos"


def find_photo_sets() -> Path | None:
    """The fetched photo folder, or None (nothing is downloaded)."""
    folder = photos_dir()
    return folder if (folder / "sources.json").is_file() else None


def require_photo_sets() -> Path:
    found = find_photo_sets()
    if found is None:
        raise DataError(f"the recipe's extra photographs are not in {photos_dir()}; run "
                        "'python -m m2s_train.synth.photo_sets fetch' (needs apt-get)")
    return found


def photo_files(folder: Path) -> list[Path]:
    """The photographs a fetched folder holds, in the order of its ``sources.json``."""
    return [folder / entry["file"] for entry in json.loads((folder / "sources.json").read_text())["photos"]]


def parse_copyright(text: str) -> list[dict[str, object]]:
    """The ``Files`` stanzas of a machine-readable (DEP-5) ``debian/copyright``: patterns, copyright, licence."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key].append(line.strip())
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = [value.strip()] if value.strip() else []
        if "files" in fields:
            stanzas.append({"files": " ".join(fields["files"]).split(),
                            "copyright": "; ".join(c for c in fields.get("copyright", []) if c),
                            "license": (fields.get("license") or [""])[0]})
    return stanzas


def _licence_of(path_in_package: str, stanzas: list[dict[str, object]]) -> dict[str, str]:
    """The last stanza whose pattern matches (DEP-5: later stanzas override earlier ones)."""
    best: dict[str, str] = {"copyright": "", "license": ""}
    for stanza in stanzas:
        for pattern in stanza["files"]:  # type: ignore[union-attr]
            regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
            if re.fullmatch(regex, path_in_package) or path_in_package.endswith("/" + pattern) or \
                    re.fullmatch(".*/" + regex, path_in_package):
                best = {"copyright": str(stanza["copyright"]), "license": str(stanza["license"])}
    return best


def _largest_image(folder: Path) -> Path:
    images = sorted((p for p in (folder / "contents" / "images").glob("*") if p.suffix.lower() in (".jpg", ".png")),
                    key=lambda p: p.stat().st_size)
    if not images:
        raise DataError(f"{folder} holds no images (contents/images)")
    return images[-1]


def _collect(photo_set: PhotoSet, deb: Path, extract: Path, target: Path) -> list[dict[str, str]]:
    members = [p if p.endswith((".jpg", ".png")) else f"{p}/*" for p in photo_set.photos]
    extract_deb(deb, [*members, photo_set.copyright_file], extract)
    stanzas = parse_copyright((extract / photo_set.copyright_file).read_text(errors="replace"))
    version = unquote(deb.name.split("_")[1]) if deb.name.count("_") >= 2 else "?"  # 4%3a5.27 -> 4:5.27
    entries = []
    for inside in photo_set.photos:
        source = extract / inside
        notes = _licence_of(inside.split("/share/", 1)[-1], stanzas)
        author = ""
        if source.is_dir():  # a Plasma wallpaper package: its largest image, its metadata
            meta_file = source / "metadata.json"
            if meta_file.is_file():
                plugin = json.loads(meta_file.read_text()).get("KPlugin", {})
                author = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
                if plugin.get("License"):
                    notes["license"] = f"{notes['license']} (debian/copyright); {plugin['License']} (metadata.json)"
            source = _largest_image(source)
        if not source.is_file():
            raise DataError(f"{deb.name} does not contain {inside}")
        name = f"{photo_set.package.split('-')[0]}-{Path(inside).stem if Path(inside).suffix else Path(inside).name}"
        name += source.suffix.lower()
        shutil.copyfile(source, target / name)
        entries.append({"file": name, "package": photo_set.package, "version": version,
                        "path": str(source.relative_to(extract)), "author": author, **notes})
    return entries


def fetch_photo_sets(apt_update: bool = False) -> Path:
    """Find the photo folder, or download the packages and fill it (atomically)."""
    found = find_photo_sets()
    if found is not None:
        return found
    target = photos_dir()
    with staged(target) as work:
        folder = work / "staged"
        folder.mkdir()
        entries = []
        for photo_set in PHOTO_SETS:
            deb = download_deb(photo_set.package, work, apt_update)
            entries += _collect(photo_set, deb, work / photo_set.package, folder)
            deb.unlink()
        (folder / "sources.json").write_text(json.dumps({"photos": entries}, indent=2) + "\n")
        lines = ["# Photographs for synthesis, from Debian packages", "",
                 "| file | package (version) | path in the package | copyright / author | licence |",
                 "|---|---|---|---|---|"]
        lines += [f"| {e['file']} | {e['package']} ({e['version']}) | {e['path']} | "
                  f"{e['copyright'] or '-'}{'; ' + e['author'] if e['author'] else ''} | {e['license']} |" for e in entries]
        (folder / "SOURCES.md").write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    return fetch_cli(argv, prog="python -m m2s_train.synth.photo_sets", doc=__doc__,
                     what=f"the photo sets ({photos_dir()})", find=find_photo_sets, fetch=fetch_photo_sets,
                     describe=lambda folder: f"{len(photo_files(folder))} photos in {folder} "
                                             f"(sources and licences: {folder / 'SOURCES.md'})")


if __name__ == "__main__":
    sys.exit(main())
