"""On-disk format of synthesized stereo datasets: one self-contained file per sample + manifests.

Layout of a dataset directory::

    dataset.json                      format version and the synthesis config (checked by every shard)
    samples/<sample_id>.npz           one sample (a zip of .npy / .png / .json members)
    manifest-<i>-of-<n>.jsonl         per-shard index, one JSON line per finished sample
    previews/<sample_id>.png          optional side-by-side previews
    orphans/<sample_id>.npz           samples a resume set aside: their source is gone or has changed

A sample file holds ``left.png`` and ``right.png`` (RGB, PNG-encoded), ``disparity.npy``
(float32 HxW, exact, left reference), ``hole.npy``/``ea_mask.npy`` (bool, right view),
``visible.npy`` (bool, left pixels seen in the right view) and ``meta.json``. It is written to a
temporary name and renamed, so a killed run never leaves half a sample; the zip members carry a
fixed timestamp, so the same inputs give byte-identical files. A sample file that exists is
complete; manifests are rebuilt from sample files on resume. Shards of one dataset may run at
the same time: manifest changes and the setting aside of orphans hold a lock on ``.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from calib.safe_files import read_json, write_bytes_atomic
from m2s_train.errors import DatasetError

log = logging.getLogger(__name__)

FORMAT = "m2s-synth-v2"  # v2: sample ids and sources from the image path relative to the --images root
READABLE_FORMATS = ("m2s-synth-v1", FORMAT)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class StereoSample:
    """One synthesized pair. Images RGB uint8 HxWx3; disparity float32 HxW (px, left reference)."""

    sample_id: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray
    hole: np.ndarray
    ea_mask: np.ndarray
    visible: np.ndarray
    meta: dict[str, Any]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _png_bytes(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DatasetError("PNG encoding failed")
    return data.tobytes()


def encode_sample(sample: StereoSample) -> bytes:
    """The sample as deterministic zip bytes (readable with ``np.load`` for the .npy members)."""
    members = [
        ("left.png", _png_bytes(sample.left), zipfile.ZIP_STORED),
        ("right.png", _png_bytes(sample.right), zipfile.ZIP_STORED),
        ("disparity.npy", _npy_bytes(sample.disparity.astype(np.float32)), zipfile.ZIP_DEFLATED),
        ("hole.npy", _npy_bytes(sample.hole.astype(bool)), zipfile.ZIP_DEFLATED),
        ("ea_mask.npy", _npy_bytes(sample.ea_mask.astype(bool)), zipfile.ZIP_DEFLATED),
        ("visible.npy", _npy_bytes(sample.visible.astype(bool)), zipfile.ZIP_DEFLATED),
        ("meta.json", json.dumps(sample.meta, sort_keys=True).encode(), zipfile.ZIP_DEFLATED),
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=1 if compression == zipfile.ZIP_DEFLATED else None)
    return buf.getvalue()


def decode_sample(path: str | os.PathLike) -> StereoSample:
    """Read a sample file; a corrupt or incomplete file raises :class:`DatasetError` naming it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            def png(name: str) -> np.ndarray:
                img = cv2.imdecode(np.frombuffer(zf.read(name), np.uint8), cv2.IMREAD_COLOR)
                if img is None:
                    raise DatasetError(f"{path}: member {name} is not a valid PNG")
                return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

            def npy(name: str) -> np.ndarray:
                return np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)

            meta = json.loads(zf.read("meta.json"))
            return StereoSample(meta["sample_id"], png("left.png"), png("right.png"), npy("disparity.npy"),
                                npy("hole.npy"), npy("ea_mask.npy"), npy("visible.npy"), meta)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"corrupt sample file {path}: {exc}") from None


def manifest_line(meta: dict[str, Any]) -> str:
    keys = ("sample_id", "source", "source_sha256", "width", "height", "max_disparity", "hole_fraction",
            "ea_fraction", "depth_model", "inpainter")
    return json.dumps({k: meta[k] for k in keys if k in meta}, sort_keys=True)


def read_sample_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the ``meta.json`` member of a sample file (cheap: no image is decoded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"corrupt sample file {path}: {exc}") from None


@contextlib.contextmanager
def dataset_lock(root: Path) -> Iterator[None]:
    """Exclusive lock over a dataset's manifests (shards running at the same time take turns)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class ShardWriter:
    """Writes samples of shard ``index`` of ``count`` into ``root``; resumable."""

    def __init__(self, root: str | os.PathLike, index: int = 0, count: int = 1) -> None:
        if not 0 <= index < count:
            raise DatasetError(f"shard index must be in [0, {count}), got {index}")
        self.root = Path(root)
        self.samples_dir = self.root / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.root / f"manifest-{index:04d}-of-{count:04d}.jsonl"

    def sample_path(self, sample_id: str) -> Path:
        return self.samples_dir / f"{sample_id}.npz"

    def is_done(self, sample_id: str) -> bool:
        return self.sample_path(sample_id).is_file()

    def remove_stale_temporaries(self, sample_ids: Iterable[str]) -> None:
        """Delete temp files a killed writer left for these (this shard's) samples; other shards'
        temp files may belong to a writer that is still running."""
        for sample_id in sample_ids:
            for stale in self.samples_dir.glob(f".{sample_id}.npz.*.tmp"):
                stale.unlink(missing_ok=True)

    def listed_ids(self) -> list[str]:
        return _manifest_ids(self.manifest)

    def set_aside(self, sample_ids: Iterable[str], reason: str) -> list[str]:
        """Move samples out of the dataset into ``orphans/`` (kept, not deleted) and drop them from
        every manifest. Returns the ids moved."""
        ids = [i for i in sample_ids if self.sample_path(i).is_file()]
        if not ids:
            return []
        aside = self.root / "orphans"
        aside.mkdir(exist_ok=True)
        with dataset_lock(self.root):
            for sample_id in ids:
                os.replace(self.sample_path(sample_id), aside / f"{sample_id}.npz")
            drop = set(ids)
            for manifest in sorted(self.root.glob("manifest-*.jsonl")):
                lines = manifest.read_text().splitlines()
                kept = [line for line in lines if _line_id(line) not in drop]
                if len(kept) != len(lines):
                    write_bytes_atomic(manifest, "".join(line + "\n" for line in kept).encode())
        log.warning("set aside %d sample(s) in %s: %s", len(ids), aside, reason)
        return ids

    def reconcile(self, expected_order: list[str]) -> None:
        """Rewrite the manifest from the sample files that exist, in processing order.

        Covers a kill between a sample's rename and its manifest line, and a cut last line.
        """
        lines = []
        for sample_id in expected_order:
            path = self.sample_path(sample_id)
            if path.is_file():
                lines.append(manifest_line(read_sample_meta(path)))
        with dataset_lock(self.root):
            write_bytes_atomic(self.manifest, "".join(line + "\n" for line in lines).encode())

    def write(self, sample: StereoSample) -> None:
        write_bytes_atomic(self.sample_path(sample.sample_id), encode_sample(sample))
        with dataset_lock(self.root), open(self.manifest, "a") as f:
            f.write(manifest_line(sample.meta) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _line_id(line: str) -> str | None:
    try:
        return json.loads(line)["sample_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None  # a line cut by a kill; rewritten by reconcile()


def _manifest_ids(manifest: Path) -> list[str]:
    if not manifest.is_file():
        return []
    return [i for i in map(_line_id, manifest.read_text().splitlines()) if i is not None]


def read_manifests(root: str | os.PathLike) -> list[dict[str, Any]]:
    """All manifest entries of a dataset (every shard), sorted by sample id; validates the layout."""
    root = Path(root)
    if not (root / "dataset.json").is_file():
        raise DatasetError(f"{root} is not a synthesized dataset: dataset.json is missing (run 'm2s-train synth')")
    info = read_json(root / "dataset.json", "dataset description", DatasetError)
    if not isinstance(info, dict) or info.get("format") not in READABLE_FORMATS:
        found = info.get("format") if isinstance(info, dict) else None
        raise DatasetError(f"{root}: dataset format {found!r}, expected one of {', '.join(READABLE_FORMATS)}")
    entries: dict[str, dict[str, Any]] = {}
    for manifest in sorted(root.glob("manifest-*.jsonl")):
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise DatasetError(f"{manifest}:{n}: not valid JSON (resume the synthesis to repair it)") from None
            entries[entry["sample_id"]] = entry
    if not entries:
        raise DatasetError(f"{root}: no samples listed in manifest-*.jsonl")
    missing = [k for k in entries if not (root / "samples" / f"{k}.npz").is_file()]
    if missing:
        raise DatasetError(f"{root}: {len(missing)} listed samples have no file, e.g. samples/{missing[0]}.npz")
    return [entries[k] for k in sorted(entries)]
