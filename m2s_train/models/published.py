"""Published checkpoints of the IGEV family, imported exactly into registry models.

The authors of IGEV-Stereo and RT-IGEV++ publish ``torch.save(DataParallel(model).state_dict())``
files (MIT licence). :func:`import_checkpoint` reads one without unpickling code
(``torch.load(weights_only=True)``), renames every tensor onto the registry model through an
explicit, reviewable table (:data:`ARCHITECTURES`), checks that every source tensor is used and
every target tensor filled with the same shape, and writes our checkpoint (safetensors +
model.json) with a model card (``model_card.json`` + ``MODEL_CARD.md``).

What the tables say about the source, on purpose:
- ``dropped``: tensors of a module the authors' forward never applies. Both IGEV networks build the
  last 3-D deconvolution of their hourglass with ``BasicConv(bn=False)``, which still creates a
  ``BatchNorm3d(8)`` (16 parameters + 3 buffers) that is never called: the 16 parameters our
  ``igev`` has fewer than the reference.
- ``aliases``: one module registered under two names, so its tensors are stored twice (the context
  encoder's ``ResidualBlock`` keeps its shortcut norm as ``norm3`` and as ``downsample.1``). Both
  copies must be equal; both count as used.

The same outputs as the authors' code (their ``InputPadder(divis_by=32)`` pre-processing included)
are the test: ``tests/m2s_train/test_published.py`` and ``benchmarks/bench_published_parity.py``
compare against the reference implementations in ``../shared/reference`` with the same weights.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from calib.safe_files import OUTPUT_MANIFEST, OwnedOutput, record_output, write_json_atomic, write_text_atomic
from m2s_train.errors import ConfigError
from m2s_train.models.registry import check_state_values, create_model, save_model

log = logging.getLogger(__name__)

IMPORT_TOOL = "m2s-train import"

# the leaves of a state dict below a module path
_LEAF = r"(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)"
# timm's MobileNetV2 layer names -> index in our InvertedResidual.block (Sequential with ReLU6 between)
_INVERTED = {"conv_pw": "0", "bn1": "1", "conv_dw": "3", "bn2": "4", "conv_pwl": "6", "bn3": "7"}
_DEPTHWISE_SEPARABLE = {"conv_dw": "0", "bn1": "1", "conv_pw": "3", "bn2": "4"}
_CONV_BN = {"conv": "conv", "bn": "norm"}  # the authors' BasicConv -> our ConvNormAct


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a regex over the source key, with named groups) -> ``target`` (``str.format`` of the
    groups, each first translated by ``maps[group]`` where given)."""

    pattern: str
    target: str
    maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def source_of(self, target: str) -> str | None:
        """The source key this rule maps onto ``target`` (None if it maps nothing there): how a missing
        tensor is named in the user's terms, the authors' key."""
        parts = re.split(r"\{(\w+)\}", self.target)  # literal, group, literal, ...
        def group(name: str) -> str:  # a mapped group is one of its values; any other one dot-free segment
            table = self.maps.get(name)
            if table is None:
                return f"(?P<{name}>[^.]+)"
            return f"(?P<{name}>{'|'.join(re.escape(v) for v in sorted(set(table.values()), key=len, reverse=True))})"

        regex = "".join(re.escape(part) if i % 2 == 0 else group(part) for i, part in enumerate(parts))
        match = re.fullmatch(regex, target)
        if match is None:
            return None
        values = {}
        for name, value in match.groupdict().items():
            table = self.maps.get(name)
            if table is not None:
                back = [k for k, v in table.items() if v == value]
                if not back:
                    return None
                value = back[0]
            values[name] = value
        source = re.sub(r"\(\?P<(\w+)>[^()]*\)", lambda m: values.get(m.group(1), m.group(0)), self.pattern)
        source = source.replace("\\.", ".")
        return source if self.apply(source) == target else None

    def apply(self, key: str) -> str | None:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        groups = {}
        for name, value in match.groupdict().items():
            table = self.maps.get(name)
            if table is not None and value not in table:
                return None
            groups[name] = table[value] if table is not None else value
        return self.target.format(**groups)


def _r(pattern: str, target: str, **maps: Mapping[str, str]) -> Rule:
    return Rule(pattern.replace("{leaf}", _LEAF), target, maps)


# Shared by both networks: MobileNetV2 feature pyramid (timm) with its upsampling path, image stems,
# matching descriptor, upsampling-weight heads, hourglass, classifier, motion encoder, heads.
_COMMON = (
    _r(r"feature\.conv_stem\.{leaf}", "feature.stem.0.{leaf}"),
    _r(r"feature\.bn1\.{leaf}", "feature.stem.1.{leaf}"),
    _r(r"feature\.block0\.0\.0\.(?P<op>\w+)\.{leaf}", "feature.to2.0.block.{op}.{leaf}", op=_DEPTHWISE_SEPARABLE),
    _r(r"feature\.block1\.0\.(?P<i>\d+)\.(?P<op>\w+)\.{leaf}", "feature.to4.{i}.block.{op}.{leaf}", op=_INVERTED),
    _r(r"feature\.block2\.0\.(?P<i>\d+)\.(?P<op>\w+)\.{leaf}", "feature.to8.{i}.block.{op}.{leaf}", op=_INVERTED),
    _r(r"feature\.block3\.(?P<s>[01])\.(?P<i>\d+)\.(?P<op>\w+)\.{leaf}", "feature.to16.{s}.{i}.block.{op}.{leaf}",
       op=_INVERTED),
    _r(r"feature\.block4\.0\.(?P<i>\d+)\.(?P<op>\w+)\.{leaf}", "feature.to32.{i}.block.{op}.{leaf}", op=_INVERTED),
    _r(r"feature\.deconv(?P<lvl>32_16|16_8|8_4)\.(?P<c>conv[12])\.conv\.{leaf}", "feature.{lvl}.{c}.conv.{leaf}",
       lvl={"32_16": "up16", "16_8": "up8", "8_4": "up4"}, c={"conv1": "up", "conv2": "fuse"}),
    _r(r"feature\.conv4\.conv\.{leaf}", "feature.out4.conv.{leaf}"),
    _r(r"stem_(?P<s>[24])\.0\.conv\.{leaf}", "stem{s}.0.conv.{leaf}"),
    _r(r"stem_(?P<s>[24])\.1\.{leaf}", "stem{s}.1.{leaf}"),
    _r(r"conv\.conv\.{leaf}", "match_conv.conv.{leaf}"),
    _r(r"desc\.{leaf}", "match_desc.{leaf}"),
    _r(r"spx_4\.0\.conv\.{leaf}", "spx4.0.conv.{leaf}"),
    _r(r"spx_4\.1\.{leaf}", "spx4.1.{leaf}"),
    _r(r"spx_2\.(?P<c>conv[12])\.conv\.{leaf}", "spx2.{c}.conv.{leaf}", c={"conv1": "up", "conv2": "fuse"}),
    _r(r"spx\.0\.{leaf}", "spx.{leaf}"),
    _r(r"spx_2_gru\.(?P<c>conv[12])\.(?P<m>conv|bn)\.{leaf}", "spx2_gru.{c}.{m}.{leaf}",
       c={"conv1": "up", "conv2": "fuse"}, m=_CONV_BN),
    _r(r"spx_gru\.0\.{leaf}", "spx_gru.{leaf}"),
    _r(r"cost_agg\.conv(?P<n>[123])\.(?P<i>[01])\.(?P<m>conv|bn)\.{leaf}", "hourglass.down{n}.{i}.{m}.{leaf}", m=_CONV_BN),
    _r(r"cost_agg\.conv(?P<n>[23])_up\.(?P<m>conv|bn)\.{leaf}", "hourglass.up{n}.{m}.{leaf}", m=_CONV_BN),
    _r(r"cost_agg\.conv1_up\.conv\.{leaf}", "hourglass.up1.conv.{leaf}"),
    _r(r"cost_agg\.agg_(?P<n>[01])\.(?P<i>[012])\.(?P<m>conv|bn)\.{leaf}", "hourglass.{n}.{i}.{m}.{leaf}",
       n={"0": "agg2", "1": "agg1"}, m=_CONV_BN),
    _r(r"cost_agg\.feature_att_(?P<a>8|16|32|up_16|up_8)\.feat_att\.0\.(?P<m>conv|bn)\.{leaf}",
       "hourglass.{a}.att.0.{m}.{leaf}", a={"8": "att1", "16": "att2", "32": "att3", "up_16": "att2_up", "up_8": "att1_up"},
       m=_CONV_BN),
    _r(r"cost_agg\.feature_att_(?P<a>8|16|32|up_16|up_8)\.feat_att\.1\.{leaf}", "hourglass.{a}.att.1.{leaf}",
       a={"8": "att1", "16": "att2", "32": "att3", "up_16": "att2_up", "up_8": "att1_up"}),
    _r(r"classifier\.{leaf}", "classifier.{leaf}"),
    _r(r"update_block\.encoder\.(?P<c>convc1|convc2|convd1|convd2|conv)\.{leaf}", "update.{c}.{leaf}",
       c={"convc1": "corr_enc.0", "convc2": "corr_enc.2", "convd1": "disp_enc.0", "convd2": "disp_enc.2",
          "conv": "motion.0"}),
    _r(r"update_block\.disp_head\.conv(?P<n>[12])\.{leaf}", "update.disp_head.{n}.{leaf}", n={"1": "0", "2": "2"}),
    _r(r"update_block\.mask_feat_4\.0\.{leaf}", "update.mask_head.0.{leaf}"),
)

def _residual(src: str, dst: str, **maps: Mapping[str, str]) -> Rule:
    """A ResidualBlock of the authors' context encoder: conv/norm names kept, downsample -> shortcut."""
    part = {"conv1": "conv1", "conv2": "conv2", "norm1": "norm1", "norm2": "norm2",
            "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}
    return _r(src + r"\.(?P<part>conv[12]|norm[12]|downsample\.[01])\.{leaf}", dst + ".{part}.{leaf}", part=part, **maps)


_LEVEL = {"04": "0", "08": "1"}  # the context encoder's outputs04/08 -> our heads of level 0/1
_IGEV_ONLY = (
    _r(r"corr_stem\.(?P<m>conv|bn)\.{leaf}", "cost_stem.{m}.{leaf}", m=_CONV_BN),
    _r(r"corr_feature_att\.feat_att\.0\.(?P<m>conv|bn)\.{leaf}", "cost_att.att.0.{m}.{leaf}", m=_CONV_BN),
    _r(r"corr_feature_att\.feat_att\.1\.{leaf}", "cost_att.att.1.{leaf}"),
    # the context encoder (MultiBasicEncoder): stem, 5 residual stages (4 and 5 = our deeper levels), heads
    _r(r"cnet\.conv1\.{leaf}", "context.stem.0.{leaf}"),
    _r(r"cnet\.norm1\.{leaf}", "context.stem.1.{leaf}"),
    _residual(r"cnet\.layer(?P<n>[123])\.(?P<i>[01])", "context.layer{n}.{i}"),
    _residual(r"cnet\.layer4\.(?P<i>[01])", "context.deeper.0.{i}"),
    _residual(r"cnet\.layer5\.(?P<i>[01])", "context.deeper.1.{i}"),
    _residual(r"cnet\.outputs(?P<lvl>04|08)\.(?P<j>[01])\.0", "context.heads.{lvl}.{j}.0", lvl=_LEVEL),
    _r(r"cnet\.outputs(?P<lvl>04|08)\.(?P<j>[01])\.1\.{leaf}", "context.heads.{lvl}.{j}.1.{leaf}", lvl=_LEVEL),
    _r(r"cnet\.outputs16\.(?P<j>[01])\.{leaf}", "context.heads.2.{j}.{leaf}"),
    _r(r"context_zqr_convs\.(?P<i>[012])\.{leaf}", "context_gates.{i}.{leaf}"),
    _r(r"update_block\.gru(?P<g>04|08|16)\.(?P<c>conv[zrq])\.{leaf}", "update.gru{g}.{c}.{leaf}"),
)

_RT_ONLY = (
    _r(r"hnet\.0\.(?P<m>conv|bn)\.{leaf}", "context.hidden.0.{m}.{leaf}", m=_CONV_BN),
    _r(r"hnet\.1\.{leaf}", "context.hidden.1.{leaf}"),
    _r(r"cnet\.(?P<m>conv|bn)\.{leaf}", "context.context.{m}.{leaf}", m=_CONV_BN),
    _r(r"context_zqr_conv\.{leaf}", "context_gates.0.{leaf}"),
    _r(r"update_block\.gru\.(?P<c>conv[zrq])\.{leaf}", "update.gru04.{c}.{leaf}"),
)

_UNUSED_BN = (r"cost_agg\.conv1_up\.bn\.\w+",
              "the hourglass's last 3-D deconvolution is BasicConv(bn=False): its BatchNorm3d(8) is built but "
              "never applied in forward")


@dataclass(frozen=True)
class PublishedArchitecture:
    """How the published checkpoints of one architecture map onto a registry model."""

    name: str  # --arch
    model: str  # registry model
    title: str
    rules: tuple[Rule, ...]
    dropped: tuple[tuple[str, str], ...]  # (source key regex, why the forward never uses it)
    aliases: tuple[tuple[str, str], ...]  # (source key regex, the key it duplicates: regex replacement)
    overrides: Mapping[str, Any]  # config changes from the registry default for the imported model
    repository: str
    reference_commit: str
    licence: str
    copyright: str
    citation: str
    published: Mapping[str, str]  # file name as published -> what it was trained on
    accuracy: str  # the authors' published figures, quoted with the source


ARCHITECTURES: dict[str, PublishedArchitecture] = {
    "igev": PublishedArchitecture(
        name="igev", model="igev", title="IGEV-Stereo (Xu, Wang, Ding, Yang, CVPR 2023)",
        rules=_COMMON + _IGEV_ONLY, dropped=(_UNUSED_BN,),
        aliases=((r"cnet\.(?P<p>layer[2-5]\.0)\.norm3\.(?P<leaf>\w+)", r"cnet.\g<p>.downsample.1.\g<leaf>"),),
        overrides={"confidence_head": False, "pad_mode": "centre", "upsample_border": "zeros"},
        repository="https://github.com/gangweiX/IGEV", reference_commit="e61a6756984844beb035ec9666ea70e05dcc6b93",
        licence="MIT", copyright="Copyright (c) 2023 Gangwei Xu",
        citation="Xu, Wang, Ding, Yang. Iterative Geometry Encoding Volume for Stereo Matching. CVPR 2023.",
        published={
            "sceneflow.pth": "Scene Flow (FlyingThings3D, Driving, Monkaa) only: the authors' zero-shot model",
            "kitti15.pth": "Scene Flow, then fine-tuned on KITTI 2012 + 2015 (the authors' KITTI 2015 submission model)",
            "kitti12.pth": "Scene Flow, then fine-tuned on KITTI 2012 + 2015 (the authors' KITTI 2012 submission model)",
            "middlebury.pth": "Scene Flow, then fine-tuned on mixed data for Middlebury (the authors' Middlebury model)",
            "eth3d.pth": "Scene Flow, then fine-tuned on mixed data for ETH3D (the authors' ETH3D model)",
        },
        accuracy="KITTI 2015 D1-all 1.59 %, KITTI 2012 3-noc 1.12 %, 0.18 s a pair on an RTX 3090 (the authors' "
                 "README, benchmark submissions); Scene Flow test EPE 0.47 px (the CVPR 2023 paper)"),
    "rt-igev": PublishedArchitecture(
        name="rt-igev", model="rt-igev", title="RT-IGEV++ (Xu et al., IGEV++, TPAMI 2025; real-time variant)",
        rules=_COMMON + _RT_ONLY, dropped=(_UNUSED_BN,), aliases=(),
        overrides={"confidence_head": False, "pad_mode": "centre", "upsample_border": "zeros"},
        repository="https://github.com/gangweiX/IGEV-plusplus", reference_commit="8add77f8dd30549f58fcc76e7aa6028b727cdc1d",
        licence="MIT", copyright="Copyright (c) 2024 Gangwei XU",
        citation="Xu, Wang, Zhang, Cheng, Liao, Yang. IGEV++: Iterative Multi-range Geometry Encoding Volumes for "
                 "Stereo Matching. arXiv:2409.00638 (TPAMI 2025).",
        published={
            "sceneflow.pth": "Scene Flow (FlyingThings3D, Driving, Monkaa) only: the authors' zero-shot model",
            "kitti.pth": "Scene Flow, then fine-tuned on KITTI 2012 + 2015 (the authors' KITTI model)",
        },
        accuracy="see the real-time comparison of the IGEV++ paper (arXiv:2409.00638); not quoted here: no copy of the "
                 "paper was at hand to check the figures against"),
}

# Distinctive key prefixes of the checkpoints users bring, to say what a file that does not fit is.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "IGEV-Stereo (--arch igev)": ("corr_stem.", "corr_feature_att.", "cnet.outputs16.", "update_block.gru16."),
    "RT-IGEV++ (--arch rt-igev)": ("hnet.", "context_zqr_conv.", "update_block.gru."),
    "IGEV++ (not importable yet)": ("cost_agg0.", "selective_conv.", "patch0.", "update_block.geo_encoder0."),
    "RAFT-Stereo (not importable yet)": ("update_block.flow_head.", "cnet.outputs32.", "update_block.gru32."),
    "a Mono2Stereo checkpoint (already ours: use it directly)": ("hourglass.", "match_desc.", "context_gates."),
}


class ImportReport(dict):
    """What an import did (JSON-able): counts, dropped and aliased keys, the card."""


def _refusal(path: Path, exc: BaseException) -> ConfigError:
    found = re.search(r"(?:unsupported|Unsupported) (?:GLOBAL|global):? ?([\w.]+)", str(exc))
    what = f"it asks for {found.group(1)}" if found else "it holds Python objects other than tensors and containers"
    return ConfigError(f"refused to unpickle {path}: {what}, and loading it would run code from the file "
                       "(read with torch.load(weights_only=True)). If you trust its source, re-save only its state "
                       "dict (torch.save(model.state_dict(), ...)) and import that")


def checkpoint_format(path: Path) -> str:
    """What a checkpoint file is, from its first bytes: ``zip`` (torch.save since 1.6), ``pickle`` (older
    torch.save), ``tar`` (the oldest torch.save), ``safetensors``, or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "unknown"


def read_published(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a published ``.pth`` file, read without running code from it.

    Accepts a bare state dict or one under ``state_dict`` / ``model`` (training scripts save either),
    with or without the prefix a wrapper adds to every key (``DataParallel``'s ``module.``,
    ``torch.compile``'s ``_orig_mod.``, a Lightning module's ``model.`` / ``net.``).
    A file that is not a checkpoint, is truncated or needs code to unpickle raises
    :class:`ConfigError` saying which.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty (0 bytes): an interrupted download? fetch it again")
    kind = checkpoint_format(path)
    if kind == "safetensors":  # holds no code: read as it is, whatever its name
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: a damaged safetensors file ({str(exc)[:160]})") from None
        kind = "read"
    if kind == "unknown":
        with open(path, "rb") as f:
            head = f.read(24)
        raise ConfigError(f"{path} is not a PyTorch checkpoint (neither a zip archive, a pickle, a tar file nor "
                          f"safetensors; it starts with {head!r}): the wrong file, or a download that saved an error page")
    try:
        data = data if kind == "read" else torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported" in str(exc) or "global" in str(exc).lower():
            raise _refusal(path, exc) from None
        raise ConfigError(f"cannot read {path}: not a PyTorch checkpoint or damaged ({str(exc).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, io.UnsupportedOperation) as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read {path}: truncated, damaged or not a PyTorch checkpoint ({first}); "
                          f"its size is {path.stat().st_size:,} bytes, compare it with the published file") from None
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict) and not isinstance(data.get(key), torch.Tensor):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path} holds {type(data).__name__ if data is not None else 'nothing'}, not a state dict "
                          "(a mapping of names to tensors)")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{path}: {len(bad)} entries are not named tensors (e.g. {str(bad[0])[:80]}): not a state dict")
    # wrappers' prefixes, when every key has one: DataParallel / DDP, torch.compile, Lightning-style modules
    stripped = True
    while stripped:
        stripped = False
        for prefix in ("module.", "_orig_mod.", "model.", "net."):
            if all(k.startswith(prefix) for k in data):
                data = {k[len(prefix):]: v for k, v in data.items()}
                stripped = True
    return data


def looks_like(keys: list[str]) -> str:
    """Which known architecture a set of state-dict keys looks like ("unknown" when none)."""
    scores = {name: sum(any(k.startswith(p) for k in keys) for p in prefixes) / len(prefixes)
              for name, prefixes in SIGNATURES.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] >= 0.5 else "no architecture we know"


@dataclass
class Mapped:
    state: dict[str, torch.Tensor]
    used: list[str]
    dropped: dict[str, str]  # source key -> why
    aliases: dict[str, str]  # source key -> the key it duplicates


def map_state(arch: PublishedArchitecture, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
              where: str) -> Mapped:
    """Rename ``source`` onto ``target``'s keys by ``arch``'s table; raise :class:`ConfigError` unless every
    source tensor is used (mapped, an equal alias, or dropped on purpose) and every target tensor is filled
    with the same shape."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unmatched, dropped, aliases, clashes = [], {}, {}, []
    for key, value in source.items():
        why = next((reason for pattern, reason in arch.dropped if re.fullmatch(pattern, key)), None)
        if why is not None:
            dropped[key] = why
            continue
        alias_of = next((re.sub(pattern, repl, key) for pattern, repl in arch.aliases if re.fullmatch(pattern, key)), None)
        if alias_of is not None:
            if alias_of not in source:
                unmatched.append(key)
            elif not torch.equal(source[alias_of], value):
                raise ConfigError(f"{where}: {key} should be the same tensor as {alias_of} (one module under two names "
                                  "in the authors' code) but the values differ: the file was edited or is damaged")
            else:
                aliases[key] = alias_of
            continue
        name = next((t for t in (rule.apply(key) for rule in arch.rules) if t is not None), None)
        if name is None or name not in target:
            unmatched.append(key)
            continue
        if name in mapped:
            clashes.append(f"{origin[name]} and {key} -> {name}")
            continue
        mapped[name], origin[name] = value, key
    missing = sorted(set(target) - set(mapped))
    shapes = [f"{origin[k]} {tuple(v.shape)} -> {k} {tuple(target[k].shape)}" for k, v in mapped.items()
              if tuple(v.shape) != tuple(target[k].shape)]
    if unmatched or missing or shapes or clashes:
        keys = list(source)
        kind = looks_like(keys)
        parts = [f"{where} does not fit {arch.title} (--arch {arch.name}): its keys look like {kind}"]
        if unmatched:
            parts.append(f"{len(unmatched)} of its {len(keys)} tensors have no place in the model (first: "
                         f"{', '.join(unmatched[:3])})")
        if missing:
            expected = [next((src for src in (r.source_of(k) for r in arch.rules) if src), k) for k in missing[:3]]
            parts.append(f"{len(missing)} of the {len(target)} tensors the model needs are missing from it (first: "
                         f"{', '.join(expected)})")
        if shapes:
            parts.append(f"{len(shapes)} with another shape (first: {shapes[0]})")
        if clashes:
            parts.append(f"two tensors for one place: {clashes[0]}")
        raise ConfigError("; ".join(parts))
    return Mapped(mapped, list(origin.values()), dropped, aliases)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version() -> str:
    from calib.version import version

    return version()


def model_card(arch: PublishedArchitecture, model: torch.nn.Module, source: Path, sha256: str, mapped: Mapped,
               n_source: int, trained_on: str | None) -> dict[str, Any]:
    """The card of an imported checkpoint (JSON-able)."""
    cfg = model.config
    published = arch.published.get(source.name)
    return {
        "card_version": 1,
        "model": model.model_name,
        "architecture": arch.title,
        "source": {"file": source.name, "sha256": sha256, "bytes": source.stat().st_size,
                   "repository": arch.repository, "reference_code_commit": arch.reference_commit},
        "trained_on": trained_on or published or (
            f"not stated: '{source.name}' is not a file name its authors publish ({', '.join(arch.published)}); "
            "pass --trained-on to record it"),
        "licence": arch.licence,
        "attribution": f"{arch.copyright}. {arch.citation}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": {"format": "RGB, float in [0, 1] (NCHW)",
                  "normalisation": f"(x - {list(cfg.mean)}) / {list(cfg.std)}: the authors' 2 * x / 255 - 1",
                  "padding": "replicate to a multiple of 32, centred (the authors' InputPadder(divis_by=32)), "
                             "cropped back"},
        "max_disparity_px": cfg.max_disp,
        "iterations": {"test": cfg.valid_iters, "train": cfg.train_iters},
        "output": "disparity (px, positive, left reference) and confidence",
        "confidence": "derived from the geometry encoding volume (probability mass within 4 px of the final "
                      "disparity); these checkpoints have no learned confidence head",
        "import": {"tool": f"mono2stereo {package_version()}", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "source_tensors": n_source, "mapped": len(mapped.used), "aliases": len(mapped.aliases),
                   "dropped": sorted(mapped.dropped), "dropped_because": sorted(set(mapped.dropped.values())),
                   "target_tensors_filled": len(mapped.state)},
        "published_accuracy": arch.accuracy,
        "verified": "outputs equal to the authors' code with the same weights (tests/m2s_train/test_published.py)",
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md: the card for people."""
    imp = card["import"]
    lines = [
        f"# {card['model']}: {card['architecture']}",
        "",
        "| | |",
        "|---|---|",
        f"| source file | `{card['source']['file']}` ({card['source']['bytes']:,} bytes) |",
        f"| sha256 | `{card['source']['sha256']}` |",
        f"| published at | {card['source']['repository']} |",
        f"| trained on | {card['trained_on']} |",
        f"| licence | {card['licence']} ({card['attribution']}) |",
        f"| parameters | {card['parameters']:,} |",
        f"| input | {card['input']['format']}; {card['input']['normalisation']}; {card['input']['padding']} |",
        f"| disparity range | 0 .. {card['max_disparity_px']} px |",
        f"| iterations | {card['iterations']['test']} at test ({card['iterations']['train']} in training here) |",
        f"| confidence | {card['confidence']} |",
        f"| published accuracy | {card['published_accuracy']} (of the source weights) |",
        f"| imported by | {imp['tool']} on {imp['date']}: {imp['source_tensors']} tensors read, {imp['mapped']} mapped, "
        f"{imp['aliases']} duplicates checked equal, {len(imp['dropped'])} dropped ({'; '.join(imp['dropped_because']) or '-'}) |",
    ]
    if "training" in card:
        t = card["training"]
        lines.append(f"| trained here | {t.get('stage')} from `{t.get('init')}` on {', '.join(t.get('datasets', []))}"
                     f"{', ' + str(t['steps']) + ' steps' if 'steps' in t else ''} |")
        lines += ["", "Derived from the authors' weights and trained further here; the licence notice of the source "
                  "applies to it. Keep this card with any copy.", ""]
    else:
        lines += ["", "The weights are the authors'; this directory is their conversion to a Mono2Stereo checkpoint "
                  "(`model.safetensors` + `model.json`). Keep this card and the licence notice with any copy.", ""]
    return "\n".join(lines)


def import_checkpoint(path: str | os.PathLike, arch_name: str, out: str | os.PathLike, *,
                      trained_on: str | None = None, overwrite: bool = False) -> ImportReport:
    """Import the published checkpoint ``path`` of architecture ``arch_name`` into a new checkpoint
    directory ``out`` (written whole or not at all; an existing ``out`` is refused unless ``overwrite``)."""
    if arch_name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture '{arch_name}'; importable: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[arch_name]
    src, out = Path(path), Path(out)
    # checked before anything is read or written; the old model goes only once the new one is complete
    claim = OwnedOutput(out, tool=IMPORT_TOOL, overwrite=overwrite, inputs=(src,))
    state = read_published(src)
    model = create_model(arch.model, **arch.overrides)
    target = model.state_dict()
    mapped = map_state(arch, state, target, str(src))
    check_state_values(model, mapped.state, str(src))  # before any cast: int32 weights are refused, not converted
    converted = {k: v.to(target[k].dtype) for k, v in mapped.state.items()}
    model.load_state_dict(converted, strict=True)
    model.eval()
    card = model_card(arch, model, src, sha256_of(src), mapped, len(state), trained_on)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        new = stage / out.name
        _write(model, card, new)
        record_output(new, IMPORT_TOOL)
        if not out.exists():
            os.rename(new, out)  # the whole model appears at once
        else:
            claim.begin()
            for item in sorted(new.iterdir()):
                if item.name != OUTPUT_MANIFEST:
                    os.replace(item, out / item.name)
            claim.finish()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("imported %s (%s) -> %s", src, arch.title, out)
    return ImportReport(out=str(out), model=arch.model, parameters=card["parameters"], **card["import"],
                        trained_on=card["trained_on"], sha256=card["source"]["sha256"])


def _write(model: torch.nn.Module, card: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True)
    save_model(model, directory)
    write_card(directory, card)


def write_card(directory: str | os.PathLike, card: Mapping[str, Any]) -> None:
    """``model_card.json`` + ``MODEL_CARD.md`` in a checkpoint directory."""
    write_json_atomic(Path(directory) / "model_card.json", dict(card))
    write_text_atomic(Path(directory) / "MODEL_CARD.md", card_markdown(card))


def derived_card(card: Mapping[str, Any] | None, init: str | os.PathLike, datasets: list[str],
                 finetune: bool) -> dict[str, Any] | None:
    """The card of weights trained here from ``init`` (whose card is ``card``; None: nothing to carry):
    the source, licence and attribution stay, what it was trained on grows by this run."""
    if card is None:
        return None
    stage = "fine-tuned (sparse labels, S2DKD)" if finetune else "trained further"
    return {**card, "trained_on": f"{card.get('trained_on')}; then {stage} with Mono2Stereo on {', '.join(datasets)}",
            "confidence": "learned confidence head, trained here (the source checkpoint had none)",
            "training": {"init": str(init), "stage": "finetune" if finetune else "pretrain", "datasets": list(datasets)},
            "verified": "the source weights were verified against the authors' code at import; these weights "
                        "were trained further and are not the authors'"}


def read_card(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The model card beside a checkpoint (imported, or carried from the checkpoint it started from), or None."""
    from calib.safe_files import read_json

    path = Path(checkpoint)
    path = (path if path.is_dir() else path.parent) / "model_card.json"
    return read_json(path, "model card", ConfigError) if path.is_file() else None


__all__ = ["ARCHITECTURES", "SIGNATURES", "derived_card", "sha256_of", "import_checkpoint", "looks_like", "map_state", "read_card",
           "read_published", "write_card"]
