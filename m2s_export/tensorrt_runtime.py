"""TensorRT engine runtime (TensorRT 10+ tensor-address API; CUDA through cuda-python). Torch-free.

Verified only where TensorRT and a GPU exist; on CPU-only machines loading an engine fails
with a clear message and the tests that need it are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.errors import ExportError, RuntimeBackendError
from m2s_export.metadata import read_sidecar
from m2s_export.runtime import StereoRuntime, check_input_shape
from m2s_export.tensorrt_build import check_engine_compat


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise RuntimeBackendError("the TensorRT runtime needs cuda-python: pip install cuda-python") from None
    return cudart


def _check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeBackendError(f"CUDA error {int(err)} in {what}")
    return rest[0] if len(rest) == 1 else rest


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
        sidecar = read_sidecar(path)
        try:
            check_engine_compat(sidecar, trt.__version__, str(path))
        except ExportError as exc:
            raise RuntimeBackendError(str(exc)) from None
        self.trt = trt
        self.cudart = _cudart()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeBackendError(f"{path} is not a valid engine for TensorRT {trt.__version__} on this GPU "
                                      "(corrupt, or built elsewhere): rebuild it with m2s-export --trt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if {"left", "right", "disparity"} - set(names):
            raise RuntimeBackendError(f"{path}: I/O tensors are {names}, expected left, right, disparity")
        shape = tuple(self.engine.get_tensor_shape("left"))
        if sidecar and {"input_height", "input_width"} <= set(sidecar):
            check_input_shape(shape, sidecar, str(path))
        h, w = int(shape[-2]), int(shape[-1])
        if shape[0] == -1:
            self.context.set_input_shape("left", (1, 3, h, w))
            self.context.set_input_shape("right", (1, 3, h, w))
        self.stream = _check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers = {}
        self.host_out = np.empty((1, 1, h, w), np.float32)
        for name in ("left", "right", "disparity"):
            nbytes = 4 * (3 if name != "disparity" else 1) * h * w
            self.buffers[name] = _check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
            self.context.set_tensor_address(name, int(self.buffers[name]))
        super().__init__((h, w), dict(sidecar or {}))

    def _run(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, arr in (("left", left), ("right", right)):
            _check(cudart.cudaMemcpyAsync(self.buffers[name], arr.ctypes.data, arr.nbytes, kind_h2d, self.stream), "H2D copy")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeBackendError("TensorRT execution failed")
        _check(cudart.cudaMemcpyAsync(self.host_out.ctypes.data, self.buffers["disparity"], self.host_out.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "D2H copy")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return self.host_out.copy()

    def __del__(self) -> None:
        for ptr in getattr(self, "buffers", {}).values():
            self.cudart.cudaFree(ptr)
