"""TensorRT engine runtime (TensorRT 10+ tensor-address API; CUDA through cuda-python). Torch-free.

The engine's I/O tensors are read from the engine itself (names, shapes, dtypes; float32 and
float16 I/O are handled, anything else is refused with the tensor named). Host buffers are
pinned (page-locked) memory, so copies are real DMA; on integrated GPUs (Jetson, where CPU and
GPU share DRAM) they are mapped memory the GPU reads directly, with no copy at all. The stream
and every buffer are released by :meth:`close` (also on garbage collection). CUDA errors are
reported by name. Verified only where TensorRT and a GPU exist; elsewhere loading an engine fails
with a clear message and the tests that need it are skipped (the I/O logic is tested with fakes).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.errors import ExportError, RuntimeBackendError
from m2s_export.metadata import checked_sidecar, read_sidecar
from m2s_export.runtime import StereoRuntime, check_input_shape
from m2s_export.tensorrt_build import check_engine_compat, check_supported_trt

INPUTS = ("left", "right")
OUTPUTS = ("disparity",)
OPTIONAL_OUTPUTS = ("confidence",)  # engines built from ONNX files exported before it lack it
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16}  # tensorrt.DataType names this runtime handles


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise RuntimeBackendError("the TensorRT runtime needs cuda-python: pip install cuda-python") from None
    try:  # cuda-python loads the driver on the first call: without one it raises a bare RuntimeError there
        cuda_check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except RuntimeError as exc:
        raise RuntimeBackendError(f"CUDA is not usable here: {exc} (no NVIDIA driver: on a Jetson it comes with "
                                  "JetPack; elsewhere install the NVIDIA driver, or run the model with onnxruntime on "
                                  "the CPU)") from None
    return cudart


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """The value(s) of a cuda-python call, or :class:`RuntimeBackendError` naming the CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        try:
            name = cudart.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001  (naming the error must not hide it)
            name = "unknown"
        hint = " (a CUDA 13 driver/toolkit mismatch? JetPack 6 needs cuda-python < 13)" if int(err) == 35 else ""
        raise RuntimeBackendError(f"CUDA error {name} ({int(err)}) in {what}{hint}")
    return rest[0] if len(rest) == 1 else rest


def io_spec(engine: Any, trt: Any, where: str) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{name: (shape with batch 1, numpy dtype)}`` of the engine's I/O; refuses what this runtime
    cannot feed (missing tensors, non-float dtypes, shapes other than N,C,H,W with N 1 or dynamic)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    missing = [n for n in INPUTS + OUTPUTS if n not in names]
    if missing:
        raise RuntimeBackendError(f"{where}: I/O tensors are {names}; missing {', '.join(missing)}")
    spec = {}
    for name in INPUTS + OUTPUTS + tuple(n for n in OPTIONAL_OUTPUTS if n in names):
        dtype = engine.get_tensor_dtype(name)
        kind = getattr(dtype, "name", str(dtype)).split(".")[-1]
        if kind not in _DTYPES:
            raise RuntimeBackendError(f"{where}: tensor '{name}' is {kind}; this runtime feeds float32 or float16 only")
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if len(shape) != 4 or shape[0] not in (1, -1) or any(d < 1 for d in shape[1:]):
            raise RuntimeBackendError(f"{where}: tensor '{name}' has shape {shape}; expected N,C,H,W with a static "
                                      "C,H,W and N 1 or dynamic")
        spec[name] = ((1, *shape[1:]), _DTYPES[kind])
    if spec["left"][0] != spec["right"][0] or spec["left"][0][1] != 3:
        raise RuntimeBackendError(f"{where}: left {spec['left'][0]} and right {spec['right'][0]} must be 1x3xHxW alike")
    return spec


class HostBuffer:
    """Page-locked host memory seen as a numpy array; ``mapped`` (integrated GPUs): also the device's."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: Any, mapped: bool) -> None:
        self.cudart = cudart
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if mapped:
            self.ptr = cuda_check(cudart, cudart.cudaHostAlloc(nbytes, cudart.cudaHostAllocMapped), "cudaHostAlloc")
            self.device = cuda_check(cudart, cudart.cudaHostGetDevicePointer(self.ptr, 0), "cudaHostGetDevicePointer")
        else:
            self.ptr = cuda_check(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            self.device = None
        self.nbytes = nbytes
        raw = (ctypes.c_uint8 * nbytes).from_address(int(self.ptr))
        self.array = np.ctypeslib.as_array(raw).view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr is not None:
            self.array = None
            self.cudart.cudaFreeHost(self.ptr)
            self.ptr = None


class TensorRTRuntime(StereoRuntime):
    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise RuntimeBackendError("TensorRT is not installed: run engines on the target (JetPack ships TensorRT)") from None
        path = Path(path)
        if not path.is_file():
            raise RuntimeBackendError(f"engine {path} not found")
        sidecar = checked_sidecar(path)  # the sidecar describes this engine, not an earlier one
        check_supported_trt(trt.__version__, RuntimeBackendError)
        self.trt = trt
        self.cudart = cudart = _cudart()
        device = cuda_check(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
        props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        try:
            check_engine_compat(sidecar, trt.__version__, str(path), f"{props.major}.{props.minor}")
        except ExportError as exc:
            raise RuntimeBackendError(str(exc)) from None
        self.host: dict[str, HostBuffer] = {}
        self.device: dict[str, Any] = {}
        self.stream = None
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeBackendError(f"{path} is not a valid engine for TensorRT {trt.__version__} on this GPU "
                                      "(corrupt, or built elsewhere): rebuild it with m2s-export --trt")
        self.spec = io_spec(self.engine, trt, str(path))
        self.outputs = [n for n in OUTPUTS + OPTIONAL_OUTPUTS if n in self.spec]
        self.has_confidence = "confidence" in self.spec
        shape = self.spec["left"][0]
        if sidecar and {"input_height", "input_width"} <= set(sidecar):
            check_input_shape(shape, sidecar, str(path))
        self.context = self.engine.create_execution_context()
        for name in INPUTS:
            if -1 in tuple(self.engine.get_tensor_shape(name)):
                self.context.set_input_shape(name, self.spec[name][0])
        self.zero_copy = bool(getattr(props, "integrated", 0))  # Jetson: CPU and GPU share the memory
        self.stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        for name, (tensor_shape, dtype) in self.spec.items():
            buf = HostBuffer(cudart, tensor_shape, dtype, mapped=self.zero_copy)
            self.host[name] = buf
            self.device[name] = buf.device if self.zero_copy else cuda_check(cudart, cudart.cudaMalloc(buf.nbytes),
                                                                             "cudaMalloc")
            self.context.set_tensor_address(name, int(self.device[name]))
        super().__init__((shape[2], shape[3]), dict(sidecar or {}))

    def _run(self, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self.cudart
        for name, arr in (("left", left), ("right", right)):
            np.copyto(self.host[name].array, arr, casting="same_kind")
            if not self.zero_copy:
                cuda_check(cudart, cudart.cudaMemcpyAsync(self.device[name], self.host[name].ptr, self.host[name].nbytes,
                                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                           f"copy of '{name}' to the GPU")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeBackendError("TensorRT execution failed (see the TensorRT log above)")
        for name in self.outputs:
            if not self.zero_copy:
                cuda_check(cudart, cudart.cudaMemcpyAsync(self.host[name].ptr, self.device[name], self.host[name].nbytes,
                                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                           f"copy of '{name}' from the GPU")
        cuda_check(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return {name: self.host[name].array.astype(np.float32) for name in self.outputs}  # copies: buffers are reused

    def close(self) -> None:
        """Release the stream and every buffer (idempotent)."""
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        if not getattr(self, "zero_copy", False):
            for ptr in getattr(self, "device", {}).values():
                cudart.cudaFree(ptr)
        self.device = {}
        for buf in getattr(self, "host", {}).values():
            buf.free()
        self.host = {}
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        self.close()


def record_engine_check(engine_path: str | Path, onnx_path: str | Path, calib_images: tuple[str, str] | None = None,
                        calib_pairs: int | None = None, allow_drift: bool = False) -> dict[str, Any]:
    """Run the built engine and the fp32 ONNX (onnxruntime, CPU) on the calibration pairs, record the
    drift as ``engine_check`` in the engine's sidecar (the PyTorch-vs-engine parity users ask for:
    the ONNX equals PyTorch to 1e-5 px). An engine beyond the fp16 thresholds is deleted unless
    ``allow_drift``."""
    import onnxruntime as ort

    from m2s_export.calibration import calibration_feeds
    from m2s_export.fp16 import DEFAULT_THRESHOLDS, disparity_drift, drift_problems
    from m2s_export.metadata import sidecar_path, write_sidecar

    runtime = TensorRTRuntime(engine_path)
    h, w = runtime.input_size
    names, feeds = calibration_feeds(h, w, calib_images, calib_pairs)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    refs = [session.run(["disparity"], f)[0] for f in feeds]
    outs = [runtime._run(f["left"], f["right"]) for f in feeds]
    runtime.close()
    check = {**disparity_drift(refs, [o["disparity"] for o in outs]), "pair_names": names,
             "reference": "fp32 ONNX in onnxruntime CPU"}
    if "confidence" in runtime.outputs and "confidence" in [o.name for o in session.get_outputs()]:
        check["confidence"] = disparity_drift([session.run(["confidence"], f)[0] for f in feeds],
                                              [o["confidence"] for o in outs])
    problems = drift_problems(check, DEFAULT_THRESHOLDS)
    check["passed"] = not problems
    meta = dict(read_sidecar(engine_path) or {})
    meta["engine_check"] = check
    write_sidecar(engine_path, meta)
    if problems and not allow_drift:
        Path(engine_path).unlink(missing_ok=True)
        sidecar_path(engine_path).unlink(missing_ok=True)
        raise ExportError(f"the engine differs from the fp32 model beyond the fp16 thresholds ({'; '.join(problems)}); "
                          "it was deleted. Build it with --no-fp16, or --allow-fp16-drift to keep it")
    return check


__all__ = ["HostBuffer", "TensorRTRuntime", "cuda_check", "io_spec", "record_engine_check"]
