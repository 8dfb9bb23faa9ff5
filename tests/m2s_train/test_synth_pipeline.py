"""The synthesis pipeline end to end: dataset format, resume after a kill, shards, bad inputs, reader, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from m2s_train.cli import main as train_main
from m2s_train.config import load_config
from m2s_train.errors import ConfigError, DatasetError
from m2s_train.synth.depth import SegmentPlaneDepthPrior
from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis, sample_id_for
from m2s_train.synth.shards import decode_sample, read_manifests

CONFIG = {"disparity.min_max_disparity": 6.0, "disparity.max_max_disparity": 20.0, "disparity.overshoot_max": 24.0}


def _config(**extra) -> SynthConfig:
    return load_config(SynthConfig, None, {**CONFIG, **extra})


def _photo(rng: np.random.Generator, h: int = 72, w: int = 96) -> np.ndarray:
    """A little scene: smooth background and a few coloured blobs (segments with colour edges)."""
    img = cv2.resize(rng.uniform(0, 255, (4, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        cx, cy, r = rng.integers(10, w - 10), rng.integers(10, h - 10), rng.integers(6, 16)
        cv2.circle(img, (int(cx), int(cy)), int(r), rng.uniform(0, 255, 3).tolist(), -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def photos(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(6):
        cv2.imwrite(str(d / f"img{i}.png"), _photo(rng))
    return d


def _dataset_bytes(root: Path) -> dict[str, bytes]:
    files = sorted((root / "samples").glob("*.npz")) + sorted(root.glob("manifest-*.jsonl"))
    return {f.name: f.read_bytes() for f in files}


class KillAfter(SegmentPlaneDepthPrior):
    """The prior, but the process "dies" (KeyboardInterrupt) after ``n`` images."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def estimate(self, images, names):
        if self.left <= 0:
            raise KeyboardInterrupt
        self.left -= len(images)
        return super().estimate(images, names)


class TestDatasetAndResume:
    def test_sample_contents(self, photos, tmp_path):
        out = tmp_path / "ds"
        summary = run_synthesis(list_images(str(photos)), out, _config(), progress=False, previews=2)
        assert summary["written"] == 6 and not summary["skipped"]
        entries = read_manifests(out)
        assert len(entries) == 6
        s = decode_sample(out / "samples" / f"{entries[0]['sample_id']}.npz")
        assert s.left.shape == s.right.shape == (72, 96, 3) and s.disparity.dtype == np.float32
        assert 6.0 <= s.meta["max_disparity"] <= 24.0
        assert np.nanmax(s.disparity) == pytest.approx(s.meta["max_disparity"], rel=1e-5)
        assert (s.ea_mask >= s.hole).all()
        assert len(list((out / "previews").glob("*.png"))) == 2

    def test_killed_and_resumed_equals_uninterrupted(self, photos, tmp_path):
        images = list_images(str(photos))
        cfg = _config(**{"depth.batch_size": 1})
        run_synthesis(images, tmp_path / "full", cfg, progress=False)

        part = tmp_path / "part"
        with pytest.raises(KeyboardInterrupt):
            run_synthesis(images, part, cfg, progress=False, estimator=KillAfter(3))
        assert len(list((part / "samples").glob("*.npz"))) == 3
        # what a kill can also leave behind: a half-written temp file and a cut manifest line
        (part / "samples" / f".{sample_id_for('img4.png')}.npz.abc.tmp").write_bytes(b"PK\x03\x04 half")
        manifest = next(part.glob("manifest-*.jsonl"))
        manifest.write_text(manifest.read_text()[:-25])
        with pytest.raises(DatasetError, match="--resume"):
            run_synthesis(images, part, cfg, progress=False)
        summary = run_synthesis(images, part, cfg, progress=False, resume=True)
        assert summary["already_done"] == 3 and summary["written"] == 3
        assert _dataset_bytes(part) == _dataset_bytes(tmp_path / "full")
        assert not list((part / "samples").glob(".*.tmp"))

    def test_resume_with_other_config_refused(self, photos, tmp_path):
        images = list_images(str(photos))
        run_synthesis(images, tmp_path / "d", _config(), progress=False, limit=1)
        with pytest.raises(DatasetError, match="different config"):
            run_synthesis(images, tmp_path / "d", _config(seed=5), progress=False, resume=True)

    def test_shards_are_disjoint_and_identical_to_one_run(self, photos, tmp_path):
        images = list_images(str(photos))
        run_synthesis(images, tmp_path / "one", _config(), progress=False)
        for i in range(3):
            run_synthesis(images, tmp_path / "three", _config(), shard=(i, 3), progress=False)
        one = {k: v for k, v in _dataset_bytes(tmp_path / "one").items() if k.endswith(".npz")}
        three = {k: v for k, v in _dataset_bytes(tmp_path / "three").items() if k.endswith(".npz")}
        assert one == three
        ids = [json.loads(line)["sample_id"] for m in sorted((tmp_path / "three").glob("manifest-*.jsonl"))
               for line in m.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 6


class TestBadInput:
    def test_mixed_formats_converted_bad_files_skipped(self, tmp_path):
        rng = np.random.default_rng(3)
        d = tmp_path / "in"
        d.mkdir()
        photo = _photo(rng)
        cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
        cv2.imwrite(str(d / "deep.png"), photo.astype(np.uint16) * 257)
        cv2.imwrite(str(d / "alpha.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
        cv2.imwrite(str(d / "tiny.png"), photo[:20, :20])
        (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        summary = run_synthesis(list_images(str(d)), tmp_path / "ds", _config(), progress=False)
        skipped = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
        assert set(skipped) == {"tiny.png", "corrupt.jpg"}
        assert "min_side" in skipped["tiny.png"] and "cannot decode" in skipped["corrupt.jpg"]
        assert summary["written"] == 3

    def test_nan_inf_constant_depth(self, tmp_path):
        rng = np.random.default_rng(4)
        d, depth = tmp_path / "in", tmp_path / "depth"
        d.mkdir()
        depth.mkdir()
        for name in ("few_nans", "all_inf", "constant"):
            cv2.imwrite(str(d / f"{name}.png"), _photo(rng))
        inv = rng.uniform(0.5, 2.0, (72, 96)).astype(np.float32)
        inv[5:8, 5:8] = np.nan
        inv[10, 10] = np.inf
        np.save(depth / "few_nans.npy", inv)
        np.save(depth / "all_inf.npy", np.full((72, 96), np.inf, np.float32))
        np.save(depth / "constant.npy", np.full((72, 96), 2.0, np.float32))
        cfg = _config(**{"depth.backend": "precomputed", "depth.precomputed_dir": str(depth)})
        summary = run_synthesis(list_images(str(d)), tmp_path / "ds", cfg, progress=False)
        reasons = {Path(s["file"]).stem: s["reason"] for s in summary["skipped"]}
        assert set(reasons) == {"all_inf", "constant"}
        assert "NaN/inf" in reasons["all_inf"] and "constant" in reasons["constant"]
        sample = decode_sample(next((tmp_path / "ds" / "samples").glob("few_nans_*.npz")))
        assert np.isfinite(sample.disparity).all()

    def test_config_errors_name_the_key(self, tmp_path):
        with pytest.raises(ConfigError, match="inpaint.radius"):
            load_config(SynthConfig, None, {"inpaint.radius": "five"})
        bad = tmp_path / "c.yaml"
        bad.write_text("depth:\n  backnd: x\n")
        with pytest.raises(ConfigError, match="backnd"):
            load_config(SynthConfig, bad)
        with pytest.raises(ConfigError, match="sd_model"):
            load_config(SynthConfig, None, {"inpaint.method": "sd"})


class TestReader:
    def test_dataset_items_and_augmentation(self, photos, tmp_path):
        torch = pytest.importorskip("torch")
        from m2s_train.data.augment import AugmentConfig
        from m2s_train.data.synthetic import SynthStereoDataset

        run_synthesis(list_images(str(photos)), tmp_path / "ds", _config(), progress=False)
        plain = SynthStereoDataset(tmp_path / "ds")
        item = plain[0]
        assert item["left"].shape == (3, 72, 96) and item["disparity"].shape == (1, 72, 96)
        assert item["left"].dtype == torch.float32 and 0 <= item["left"].min() and item["left"].max() <= 1
        assert item["valid"].float().mean() > 0.95 and item["noc"].sum() < item["valid"].sum()

        aug = SynthStereoDataset(tmp_path / "ds", AugmentConfig(crop=(48, 64), asymmetric_prob=1.0), seed=1)
        a, b = aug[2], aug[2]
        assert a["left"].shape == (3, 48, 64)
        assert torch.equal(a["left"], b["left"])  # deterministic per (seed, epoch, index)
        aug.set_epoch(1)
        assert not torch.equal(aug[2]["left"], a["left"])
        big = SynthStereoDataset(tmp_path / "ds", AugmentConfig(crop=(100, 128)))[0]  # larger than 72x96
        assert big["left"].shape == (3, 100, 128)
        assert not big["valid"][0, 72:].any() and not big["valid"][0, :, 96:].any()  # padding has no GT

    def test_not_a_dataset(self, tmp_path):
        with pytest.raises(DatasetError, match="dataset.json"):
            read_manifests(tmp_path)


class TestCli:
    def test_synth_command(self, photos, tmp_path, capsys):
        rc = train_main(["synth", "--images", str(photos / "*.png"), "--out", str(tmp_path / "ds"), "--min-disp", "6",
                         "--max-disp", "20", "--preview", "1", "--quiet", "--limit", "2"])
        assert rc == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["written"] == 2
        assert train_main(["synth", "--images", str(tmp_path / "none/*.jpg"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
        assert "no images found" in capsys.readouterr().err


class TestResumeSafety:
    """A dataset is never mixed from two configs or stale sources (each of these failed before)."""

    def test_every_shard_checks_the_dataset_config(self, photos, tmp_path):
        images = list_images(str(photos))
        run_synthesis(images, tmp_path / "d", _config(), shard=(0, 2), progress=False)
        with pytest.raises(DatasetError, match="different config.*seed"):
            run_synthesis(images, tmp_path / "d", _config(seed=99), shard=(1, 2), progress=False)
        assert not (tmp_path / "d" / "manifest-0001-of-0002.jsonl").exists()

    def test_resume_does_not_depend_on_how_the_images_are_spelled(self, photos, tmp_path, monkeypatch):
        from m2s_train.synth.pipeline import image_root

        cfg = _config(**{"depth.batch_size": 1})
        run_synthesis(list_images(str(photos)), tmp_path / "full", cfg, progress=False, root=image_root(str(photos)))
        monkeypatch.chdir(tmp_path)
        with pytest.raises(KeyboardInterrupt):  # relative folder spelling, killed after 3
            run_synthesis(list_images("photos"), tmp_path / "part", cfg, progress=False, estimator=KillAfter(3),
                          root=image_root("photos"))
        spec = str(photos.resolve() / "*.png")  # resumed with an absolute glob
        summary = run_synthesis(list_images(spec), tmp_path / "part", cfg, progress=False, resume=True,
                                root=image_root(spec))
        assert summary["already_done"] == 3 and summary["written"] == 3
        assert _dataset_bytes(tmp_path / "part") == _dataset_bytes(tmp_path / "full")
        assert {e["source"] for e in read_manifests(tmp_path / "part")} == {f"img{i}.png" for i in range(6)}

    def test_changed_and_removed_sources_are_set_aside_on_resume(self, photos, tmp_path):
        out = tmp_path / "d"
        run_synthesis(list_images(str(photos)), out, _config(), progress=False)
        old = decode_sample(out / "samples" / f"{sample_id_for('img1.png')}.npz")
        cv2.imwrite(str(photos / "img1.png"), _photo(np.random.default_rng(99)))  # content changed
        (photos / "img2.png").unlink()  # image removed
        summary = run_synthesis(list_images(str(photos)), out, _config(), progress=False, resume=True)
        assert summary["written"] == 1 and summary["already_done"] == 4
        entries = read_manifests(out)
        assert {e["source"] for e in entries} == {"img0.png", "img1.png", "img3.png", "img4.png", "img5.png"}
        new = decode_sample(out / "samples" / f"{sample_id_for('img1.png')}.npz")
        assert new.meta["source_sha256"] != old.meta["source_sha256"]
        assert not np.array_equal(new.left, old.left)
        orphans = sorted(p.name for p in (out / "orphans").glob("*.npz"))  # kept, not deleted
        assert orphans == sorted([f"{sample_id_for('img1.png')}.npz", f"{sample_id_for('img2.png')}.npz"])

    def test_negative_limit_is_an_error(self, photos, tmp_path):
        with pytest.raises(ConfigError, match="--limit"):
            run_synthesis(list_images(str(photos)), tmp_path / "d", _config(), progress=False, limit=-1)

    def test_damaged_jpeg_and_missing_depth_map_are_skipped(self, photos, tmp_path):
        rng = np.random.default_rng(5)
        ok, buf = cv2.imencode(".jpg", _photo(rng, 96, 128))
        damaged = bytearray(buf.tobytes())
        damaged[len(damaged) // 2 : len(damaged) // 2 + 80] = bytes(80)  # zeroed mid-stream: libjpeg warns, decodes grey
        (photos / "damaged.jpg").write_bytes(bytes(damaged))
        depth = tmp_path / "depth"
        depth.mkdir()
        for i in range(6):
            if i != 3:  # img3 has no precomputed map
                np.save(depth / f"img{i}.npy", rng.uniform(0.5, 2.0, (72, 96)).astype(np.float32))
        np.save(depth / "damaged.npy", rng.uniform(0.5, 2.0, (96, 128)).astype(np.float32))
        cfg = _config(**{"depth.backend": "precomputed", "depth.precomputed_dir": str(depth), "depth.batch_size": 4})
        summary = run_synthesis(list_images(str(photos)), tmp_path / "d", cfg, progress=False)
        reasons = {Path(s["file"]).name: s["reason"] for s in summary["skipped"]}
        assert set(reasons) == {"damaged.jpg", "img3.png"}
        assert "damaged JPEG" in reasons["damaged.jpg"] and "Corrupt JPEG data" in reasons["damaged.jpg"]
        assert "img3.npy" in reasons["img3.png"]
        assert summary["written"] == 5


def test_a_dataset_from_before_new_options_resumes(tmp_path):
    """dataset.json written before inpaint.edge_aware / camera existed: they read as their defaults
    (which reproduce the old behaviour), so --resume goes on instead of refusing the dataset."""
    from m2s_train.synth.pipeline import SynthConfig, _check_dataset_json

    _check_dataset_json(tmp_path, SynthConfig())
    info = json.loads((tmp_path / "dataset.json").read_text())
    del info["config"]["camera"], info["config"]["inpaint"]["edge_aware"]
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    _check_dataset_json(tmp_path, SynthConfig())  # no error
    with pytest.raises(DatasetError, match="differs in: inpaint.edge_aware"):
        _check_dataset_json(tmp_path, load_config(SynthConfig, None, {"inpaint.edge_aware": False}))


def test_a_folder_of_symbolic_links_is_its_own_root(tmp_path):
    """Photos linked into a folder (not copied) keep that folder as their root: sample ids come from the
    links' names, not from where the links point (resolving them put every image outside the root)."""
    from m2s_train.synth.pipeline import image_root, list_images, source_name

    (tmp_path / "store").mkdir()
    (tmp_path / "linked").mkdir()
    cv2.imwrite(str(tmp_path / "store" / "a.png"), np.zeros((80, 80, 3), np.uint8))
    (tmp_path / "linked" / "first.png").symlink_to(tmp_path / "store" / "a.png")
    images = list_images(str(tmp_path / "linked"))
    root = image_root(str(tmp_path / "linked"))
    assert [source_name(p, root) for p in images] == ["first.png"]
