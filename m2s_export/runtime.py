"""One inference interface over PyTorch checkpoints, ONNX models and TensorRT engines.

``load_runtime(path)`` picks the backend from the file: a checkpoint directory or
``.safetensors`` -> PyTorch, ``.onnx`` -> onnxruntime (TensorRT / CUDA execution providers when
present, else CPU), ``.engine``/``.plan`` -> TensorRT. Every backend has the same
``infer_with_confidence(left_rgb_uint8, right_rgb_uint8) -> Inference(disparity, confidence)``
(float32 HxW each; ``confidence`` in [0, 1], None for a model exported before it had one) and the
disparity-only ``infer``, with identical pre- and post-processing: resize to the model's input
size, [0, 1] float NCHW, and the outputs resized back (disparity values scaled by the width
ratio). ``infer_right_view`` runs the mirrored, swapped pair: the disparity of the right view (for
a left-right check). The onnxruntime and TensorRT paths import no torch, so a robot image needs
neither the training stack nor torch.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from m2s_export.errors import RuntimeBackendError
from m2s_export.metadata import checked_sidecar, from_onnx_props, read_sidecar, sha256_file


def check_pair(left: np.ndarray, right: np.ndarray) -> None:
    """Both RGB uint8 HxWx3 of one size, or :class:`RuntimeBackendError` saying what is wrong."""
    for name, img in (("left", left), ("right", right)):
        if not isinstance(img, np.ndarray):
            raise RuntimeBackendError(f"{name} image must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise RuntimeBackendError(
                f"{name} image must be RGB uint8 HxWx3, got dtype {img.dtype} shape {img.shape} "
                "(convert mono/BGR/RGBA/16-bit images to RGB uint8 first)"
            )
        if min(img.shape[:2]) < 2:
            raise RuntimeBackendError(f"{name} image is {img.shape[1]}x{img.shape[0]}: an empty or one-pixel image "
                                      "has no disparity")
    if left.shape != right.shape:
        raise RuntimeBackendError(f"left {left.shape[1]}x{left.shape[0]} and right {right.shape[1]}x{right.shape[0]} "
                                  "images differ in size; a rectified pair has one size")


def to_input(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """RGB uint8 HxWx3 -> 1x3xhxw float32 in [0, 1], resized to ``size`` = (h, w) when given."""
    if size is not None and image.shape[:2] != size:
        interp = cv2.INTER_AREA if image.shape[0] > size[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (size[1], size[0]), interpolation=interp)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) * np.float32(1.0 / 255.0)


def from_output(disparity: np.ndarray, out_hw: tuple[int, int], scale_values: bool = True) -> np.ndarray:
    """Model output (any of HxW, 1xHxW, 1x1xHxW) -> HxW float32 at ``out_hw``, values scaled with the width
    (``scale_values``: a disparity; not for a confidence)."""
    d = np.asarray(disparity, dtype=np.float32).reshape(disparity.shape[-2:])
    h, w = d.shape
    if (h, w) != out_hw:
        d = cv2.resize(d, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
        if scale_values:
            d *= np.float32(out_hw[1] / w)
    return d


class Inference(NamedTuple):
    """What a runtime returns for a pair: HxW float32 disparity (px) and confidence in [0, 1] (None for
    a model exported before models had one)."""

    disparity: np.ndarray
    confidence: np.ndarray | None


def check_input_shape(shape: Any, meta: dict[str, Any], where: str) -> None:
    """Refuse a model whose graph input size (N,3,H,W) disagrees with its metadata: it would load,
    then fail (or silently resize wrongly) on every frame."""
    dims = list(shape)
    want = (meta["input_height"], meta["input_width"])
    hw = tuple(dims[-2:]) if len(dims) == 4 else None
    if hw is None or (dims[1] not in (3, "3") and isinstance(dims[1], int)) or (
            all(isinstance(d, int) for d in hw) and hw != want):
        raise RuntimeBackendError(f"{where}: the graph's input is {dims} but its metadata says 1x3x{want[0]}x{want[1]}; "
                                  "the file was edited or its metadata belongs to another export: re-export it")


class StereoRuntime:
    """Base: pre/post-processing, warm-up and timing; subclasses implement :meth:`_run`."""

    backend = "base"

    def __init__(self, input_size: tuple[int, int] | None, meta: dict[str, Any]) -> None:
        self.input_size = input_size  # (h, w) the model runs at; None: the image's own size
        self.meta = meta
        self.timings: dict[str, deque[float]] = {k: deque(maxlen=500) for k in ("pre", "infer", "post", "total")}

    has_confidence = True  # the model has a ``confidence`` output (set by the subclasses that can tell)

    def _run(self, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs on 1x3xhxw inputs: ``disparity`` and, where it has one, ``confidence``."""
        raise NotImplementedError

    def infer_with_confidence(self, left: np.ndarray, right: np.ndarray) -> Inference:
        """Disparity (px, left reference) and its confidence of a rectified RGB uint8 pair, float32 HxW
        at the input size."""
        check_pair(left, right)
        t0 = time.perf_counter()
        a, b = to_input(left, self.input_size), to_input(right, self.input_size)
        t1 = time.perf_counter()
        raw = self._run(a, b)
        t2 = time.perf_counter()
        disp = from_output(raw["disparity"], left.shape[:2])
        conf = raw.get("confidence")
        if conf is not None:
            conf = np.clip(from_output(conf, left.shape[:2], scale_values=False), 0.0, 1.0)
        t3 = time.perf_counter()
        for key, value in (("pre", t1 - t0), ("infer", t2 - t1), ("post", t3 - t2), ("total", t3 - t0)):
            self.timings[key].append(value)
        return Inference(disp, conf)

    def infer(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Disparity (px, left reference) of a rectified RGB uint8 pair, float32 HxW at the input size."""
        return self.infer_with_confidence(left, right).disparity

    def infer_right_view(self, left: np.ndarray, right: np.ndarray) -> Inference:
        """Disparity of the *right* view (px, ``x_L = x_R + d``) and its confidence: the model run on the
        swapped, mirrored pair (mirroring turns the right view into a left reference), mirrored back."""
        out = self.infer_with_confidence(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))
        conf = None if out.confidence is None else np.ascontiguousarray(out.confidence[:, ::-1])
        return Inference(np.ascontiguousarray(out.disparity[:, ::-1]), conf)

    def warmup(self, runs: int = 2) -> None:
        h, w = self.input_size or (64, 96)
        rng = np.random.default_rng(0)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for _ in range(runs):
            self.infer(img, img)
        for q in self.timings.values():
            q.clear()

    def stats(self) -> dict[str, dict[str, float]]:
        """Median / p95 / mean milliseconds per stage over the recent calls."""
        out = {}
        for key, q in self.timings.items():
            if q:
                arr = np.asarray(q) * 1e3
                out[key] = {"median_ms": float(np.median(arr)), "p95_ms": float(np.percentile(arr, 95)),
                            "mean_ms": float(arr.mean()), "count": len(arr)}
        return out


class TorchRuntime(StereoRuntime):
    backend = "torch"

    def __init__(self, checkpoint: str | Path, input_size: tuple[int, int] | None = None, iters: int | None = None,
                 device: str = "auto") -> None:
        import torch

        from m2s_train.models import load_model

        self.torch = torch
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model = load_model(checkpoint).to(self.device).eval()
        self.iters = iters
        meta = {"model_name": self.model.model_name, "iters": iters or self.model.config.valid_iters,
                "max_disp": self.model.config.max_disp}
        super().__init__(input_size, meta)

    def _run(self, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(left).to(self.device), torch.from_numpy(right).to(self.device),
                             iters=self.iters)
        return {"disparity": out.disparity.float().cpu().numpy(), "confidence": out.confidence.float().cpu().numpy()}


EXECUTIONS = ("auto", "tensorrt", "cuda", "cpu")
_EP = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def trt_cache_dir(model: Path) -> Path:
    """Where onnxruntime's TensorRT provider keeps the engines of ``model``:
    ``<model>.ort-trt-cache/<sha256 of the file, 16 hex>/``. onnxruntime keys its cache on the file name,
    the graph's input and node names and versions, not the weights: two exports of one model from
    different checkpoints got the same key, and after ``m2s-export --overwrite`` of a retrained model
    the node kept serving the old engine. A folder per content makes the new weights build a new engine.
    (The timing cache, per-layer timings, stays shared in ``<model>.ort-trt-cache/``.)"""
    return model.with_name(model.name + ".ort-trt-cache") / sha256_file(model)[:16]


def onnx_providers(model: Path, available: list[str], execution: str = "auto",
                   trt_fp16: bool = False) -> list[Any]:
    """onnxruntime providers for ``execution`` (auto: TensorRT, else CUDA, else CPU; CPU is always the
    fallback). The TensorRT execution provider gets an engine and timing cache beside the model
    (:func:`trt_cache_dir`: one folder per content of the file), so it builds its engine once, not at every
    start (minutes on an Orin), and FP16 only when asked: it does not apply the export's fp32 set, so an FP16
    engine is better built with ``m2s-export --trt``."""
    if execution not in EXECUTIONS:
        raise RuntimeBackendError(f"execution must be one of {', '.join(EXECUTIONS)}, got '{execution}'")
    wanted = [k for k in ("tensorrt", "cuda", "cpu") if _EP[k] in available] if execution == "auto" else [execution, "cpu"]
    missing = [k for k in wanted if _EP[k] not in available]
    if missing:
        raise RuntimeBackendError(f"onnxruntime here has no {_EP[missing[0]]} (available: {', '.join(available)}); "
                                  "install onnxruntime-gpu with TensorRT/CUDA, or use execution 'cpu'")
    out: list[Any] = []
    for kind in dict.fromkeys(wanted):
        if kind == "tensorrt":
            engines = trt_cache_dir(model)
            out.append((_EP[kind], {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
                                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(engines.parent),
                                    "trt_fp16_enable": bool(trt_fp16)}))
        else:
            out.append(_EP[kind])
    return out


class OnnxRuntime(StereoRuntime):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[Any] | None = None, threads: int | None = None,
                 execution: str = "auto", trt_fp16: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeBackendError("onnxruntime is not installed: pip install 'mono2stereo[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise RuntimeBackendError(f"ONNX model {path} not found")
        checked_sidecar(path)  # a model changed after its export (one byte of a weight) is refused, not run
        wanted = providers or onnx_providers(path, ort.get_available_providers(), execution, trt_fp16)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RuntimeBackendError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None
        meta = from_onnx_props(dict(self.session.get_modelmeta().custom_metadata_map), str(path))
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if names[:2] != ["left", "right"]:
            raise RuntimeBackendError(f"{path}: inputs are {names}, expected ['left', 'right']")
        check_input_shape(inputs[0].shape, meta, str(path))
        outputs = [o.name for o in self.session.get_outputs()]
        if "disparity" not in outputs:
            raise RuntimeBackendError(f"{path}: outputs are {outputs}, expected 'disparity' (and 'confidence')")
        self.outputs = ["disparity"] + (["confidence"] if "confidence" in outputs else [])
        self.has_confidence = "confidence" in outputs
        self.providers = self.session.get_providers()
        super().__init__((meta["input_height"], meta["input_width"]), meta)

    def _run(self, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {"left": left, "right": right})))


BACKENDS = {"torch": ("", ".safetensors"), "onnxruntime": (".onnx",), "tensorrt": (".engine", ".plan", ".trt")}


def runtime_backend(path: str | Path, backend: str = "auto") -> str:
    """The backend that runs ``path``: by file type with ``auto``, else ``backend`` once checked to fit."""
    p = Path(path)
    kind = "torch" if p.is_dir() or p.suffix == ".safetensors" else next(
        (k for k, suffixes in BACKENDS.items() if p.suffix in suffixes and p.suffix), None)
    if backend not in ("auto", *BACKENDS):
        raise RuntimeBackendError(f"backend must be auto, {', '.join(BACKENDS)}; got '{backend}'")
    if kind is None:
        raise RuntimeBackendError(f"cannot tell the backend of '{p}': use a checkpoint directory, .safetensors, "
                                  ".onnx or .engine/.plan/.trt")
    if backend != "auto" and backend != kind:
        raise RuntimeBackendError(f"backend '{backend}' cannot run '{p}' (a {kind} model; {backend} expects "
                                  f"{' or '.join(s or 'a directory' for s in BACKENDS[backend])})")
    return kind


def load_runtime(path: str | Path, backend: str = "auto", **kwargs: Any) -> StereoRuntime:
    """The runtime for ``path`` (see module docstring); ``backend`` picks it explicitly (checked)."""
    p = Path(path)
    kind = runtime_backend(p, backend)
    if kind == "torch":
        return TorchRuntime(p if p.is_dir() else p.parent, **kwargs)
    if kind == "onnxruntime":
        return OnnxRuntime(p, **kwargs)
    from m2s_export.tensorrt_runtime import TensorRTRuntime

    return TensorRTRuntime(p, **kwargs)


__all__ = ["BACKENDS", "Inference", "OnnxRuntime", "StereoRuntime", "TorchRuntime", "check_pair", "load_runtime", "read_sidecar",
           "runtime_backend", "trt_cache_dir"]
