"""The Debian photo sets (m2s_train.synth.photo_sets): licences read from the package, files taken from a real .deb.

No download here: a small package is built with dpkg-deb and read back through the same extraction the fetch uses.
"""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from m2s_train.synth import photo_sets
from m2s_train.synth.photo_sets import PhotoSet, parse_copyright

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2014 Somebody
License: GPL-2+

Files: backgrounds/demo/nature/Leaf.jpg
       backgrounds/demo/nature/Stone.jpg
Copyright: 2008, Ann Author <ann@example.org>
           2009, Bob Author
License: CC-BY-SA-3.0
Comment: a comment

License: GPL-2+
 This program is free software ...
"""


def test_copyright_stanzas_and_the_last_matching_one_wins():
    stanzas = parse_copyright(COPYRIGHT)
    assert [s["files"] for s in stanzas] == [["*"], ["backgrounds/demo/nature/Leaf.jpg", "backgrounds/demo/nature/Stone.jpg"]]
    assert stanzas[1]["copyright"] == "2008, Ann Author <ann@example.org>; 2009, Bob Author"
    leaf = photo_sets._licence_of("backgrounds/demo/nature/Leaf.jpg", stanzas)
    assert leaf == {"copyright": "2008, Ann Author <ann@example.org>; 2009, Bob Author", "license": "CC-BY-SA-3.0"}
    assert photo_sets._licence_of("wallpapers/Other/contents/images/1.jpg", stanzas)["license"] == "GPL-2+"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("tar") is None, reason="needs dpkg-deb and tar (Debian)")
def test_photos_come_out_of_a_real_package_with_their_sources(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: demo-backgrounds\nVersion: 1:2.0-1\nArchitecture: all\n"
                                             "Maintainer: x <x@example.org>\nDescription: demo\n")
    nature = root / "usr/share/backgrounds/demo/nature"
    nature.mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
    cv2.imwrite(str(nature / "Leaf.jpg"), image)
    wall = root / "usr/share/wallpapers/Lake/contents/images"
    wall.mkdir(parents=True)
    cv2.imwrite(str(wall / "64x40.jpg"), image[:, :, ::-1])
    cv2.imwrite(str(wall / "640x400.jpg"), cv2.resize(image, (640, 400)))
    (root / "usr/share/wallpapers/Lake/metadata.json").write_text(json.dumps(
        {"KPlugin": {"Authors": [{"Name": "Cy Photographer"}], "License": "LGPLv3"}}))
    doc = root / "usr/share/doc/demo-backgrounds"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    deb = tmp_path / "demo-backgrounds_1%3a2.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)

    target = tmp_path / "photos"
    target.mkdir()
    demo = PhotoSet("demo-backgrounds", ("usr/share/backgrounds/demo/nature/Leaf.jpg", "usr/share/wallpapers/Lake"),
                    "usr/share/doc/demo-backgrounds/copyright")
    entries = photo_sets._collect(demo, deb, tmp_path / "extract", target)

    assert [e["file"] for e in entries] == ["demo-Leaf.jpg", "demo-Lake.jpg"]
    leaf, lake = entries
    assert leaf["version"] == "1:2.0-1" and leaf["license"] == "CC-BY-SA-3.0" and "Ann Author" in leaf["copyright"]
    assert lake["path"] == "usr/share/wallpapers/Lake/contents/images/640x400.jpg"  # the largest image
    assert lake["author"] == "Cy Photographer" and lake["license"] == "GPL-2+ (debian/copyright); LGPLv3 (metadata.json)"
    assert cv2.imread(str(target / "demo-Lake.jpg")).shape == (400, 640, 3)

    missing = PhotoSet("demo-backgrounds", ("usr/share/backgrounds/demo/nature/Gone.jpg",),
                       "usr/share/doc/demo-backgrounds/copyright")
    with pytest.raises(Exception, match="Gone.jpg"):
        photo_sets._collect(missing, deb, tmp_path / "extract2", target)


def test_absent_photo_sets_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("M2S_CACHE_DIR", str(tmp_path))
    assert photo_sets.find_photo_sets() is None
    with pytest.raises(Exception, match="python -m m2s_train.synth.photo_sets fetch"):
        photo_sets.require_photo_sets()
    done = subprocess.run([sys.executable, "-m", "m2s_train.synth.photo_sets", "where"], capture_output=True, text=True,
                          env={**os.environ, "M2S_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 1 and done.stderr.startswith("error: the photo sets (") and "not found" in done.stderr
