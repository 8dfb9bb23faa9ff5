"""The authors' reference implementations as test oracles (development only, never at run time).

``../shared/reference`` (or ``$M2S_REFERENCE_DIR``) holds the authors' model code with ``oracle.py``,
which builds each network on CPU with random weights. These helpers run a reference network the way
its authors' demo does (``InputPadder(divis_by=32)``, ``test_mode=True``) so that an imported
checkpoint can be compared with it on the same pair: ``tests/m2s_train/test_published.py`` and
``benchmarks/bench_published.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from m2s_train.errors import ConfigError

# oracle name -> (root of its "core" package, module of its InputPadder)
_PADDERS = {"igev": ("IGEV/IGEV-Stereo", "core.utils.utils"), "rt-igev": ("IGEV-plusplus", "core_rt.utils.utils")}


def find_reference() -> Path | None:
    """The reference folder (with oracle.py), or None where this checkout has none beside it."""
    env = os.environ.get("M2S_REFERENCE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "reference")
    return next((c for c in candidates if (c / "oracle.py").is_file()), None)


def load_oracle() -> Any:
    """The ``oracle`` module; :class:`ConfigError` saying what is missing otherwise."""
    root = find_reference()
    if root is None:
        raise ConfigError("the authors' reference code is not here: expected ../shared/reference/oracle.py beside the "
                          "checkout (or set M2S_REFERENCE_DIR)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib.util

    # timm is imported by the oracle itself (after it has put its torchvision stand-in on the path)
    absent = [m for m in ("timm", "opt_einsum", "scipy") if importlib.util.find_spec(m) is None]
    if absent:
        raise ConfigError(f"the reference oracle needs timm==0.5.4 (pip install --no-deps), opt_einsum and scipy; "
                          f"missing: {', '.join(absent)}")
    import oracle  # type: ignore[import-not-found]

    return oracle


def randomise_statistics(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in place), so that a port
    which drops or swaps them shows: freshly built networks all have mean 0, variance 1, weight 1, bias 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net


def reference_network(name: str, seed: int = 0) -> torch.nn.Module:
    """Reference network ``name`` (oracle's names) with seeded random weights and BatchNorm statistics."""
    oracle = load_oracle()
    torch.manual_seed(seed)
    return randomise_statistics(oracle.build(name), seed)


def reference_disparity(name: str, net: torch.nn.Module, left255: torch.Tensor, right255: torch.Tensor,
                        iters: int) -> torch.Tensor:
    """What the authors' demo computes: pad with their InputPadder(divis_by=32), run in test mode, unpad.
    left255/right255: B,3,H,W float in [0, 255] -> B,1,H,W disparity (px)."""
    oracle = load_oracle()
    root, module = _PADDERS[name]
    padder = oracle._import(root, module).InputPadder(left255.shape, divis_by=32)
    left, right = padder.pad(left255, right255)
    with torch.no_grad():
        return padder.unpad(net(left, right, iters=iters, test_mode=True))


__all__ = ["find_reference", "load_oracle", "randomise_statistics", "reference_disparity", "reference_network"]
