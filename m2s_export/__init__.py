"""Mono2Stereo export: ONNX, TensorRT engines and inference runtimes (``m2s-export``)."""
