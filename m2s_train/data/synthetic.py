"""Reader of ``m2s-train synth`` datasets as a ``torch.utils.data.Dataset``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from m2s_train.data.augment import AugmentConfig
from m2s_train.data.stereo_datasets import make_item
from m2s_train.synth.shards import decode_sample, read_manifests


class SynthStereoDataset(Dataset):
    """Samples as dicts of tensors:

    ``left``, ``right``: 3xHxW float32 in [0, 1]; ``disparity``: 1xHxW float32 px (exact everywhere);
    ``valid``: 1xHxW bool (finite, > 0); ``noc``: 1xHxW bool (left pixels visible in the right view);
    ``sample_id``: str.

    Args:
        root: dataset directory written by ``m2s-train synth``.
        augment: augmentation config, or None for none (evaluation).
        seed: base seed; item ``i`` in epoch ``e`` is augmented with seed (seed, e, i), so runs and
            resumed runs see the same crops (call :meth:`set_epoch` each epoch).
    """

    def __init__(self, root: str | os.PathLike, augment: AugmentConfig | None = None, seed: int = 0) -> None:
        self.root = Path(root)
        self.entries = read_manifests(self.root)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(left, right, disparity, non-occluded mask) of sample ``index``, unaugmented."""
        sample = decode_sample(self.root / "samples" / f"{self.entries[index]['sample_id']}.npz")
        return sample.left, sample.right, sample.disparity, sample.visible

    def __getitem__(self, index: int) -> dict[str, object]:
        left, right, disp, noc = self.load(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return make_item(left, right, disp, noc, self.entries[index]["sample_id"], self.augment, rng)
