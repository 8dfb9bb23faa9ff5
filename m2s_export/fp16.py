"""FP16 for TensorRT, decided and checked on the workstation: which nodes stay fp32, an fp16 ONNX
for strongly typed networks, and an fp16 check that runs on any CPU. Torch-free.

The fp32 set (:func:`fp32_set`) is the union of
- **precision regions, by construction**: the nodes of the model's named fp32 modules
  (:data:`FP32_REGIONS`: look-up coordinates and their floor/fraction/gather indices, the
  soft-argmin, the recurrent ``disp + delta``, the final convex upsampling, the confidence cues:
  distances to candidates, a logarithm of probabilities, the right view sampled at ``x - d``). fp16 has a spacing of
  1/8 between 128 and 256, so interpolation weights and small GRU updates computed there would
  be quantised or lost, whatever the magnitudes;
- **range**: for every activation whose magnitude on the calibration pairs exceeds half the fp16
  maximum (:func:`activation_peaks`, which needs the memory of one inference), its producer *and
  all its consumers*: TensorRT would otherwise hand the consumers an fp16 copy of the fp32
  value, which is inf again;
- the consumers of initializers or constants above the fp16 maximum (never clipped silently).

It is stored in the ONNX metadata and sidecar at export time, so ``m2s-export --trt`` on the
Jetson reads it instead of running the analysis there (4.3 GB peak for igev-rt at 640x480, too much
for an Orin Nano's 8 GB shared with everything else). Both TensorRT paths use it: TensorRT 10 as per-layer precision
constraints matched by layer *output tensor* names (:mod:`m2s_export.tensorrt_build`), TensorRT
>= 11 through :func:`to_fp16_onnx`, an fp16 ONNX in which exactly those nodes stay fp32.

The fp16 check (:func:`fp16_check`) runs :func:`fp16_emulation` in onnxruntime on the CPU: the
fp32 graph with every tensor that an fp16 node reads or writes rounded to fp16 (Cast pairs,
graph optimisations off so they are kept), including what an fp16 node writes for an fp32 node
(the engine stores it in fp16 and converts it at that border), and fp16-rounded weights, against
the fp32 graph. It covers fp16 storage between layers, overflow to inf and the pinning. It is
neither pessimistic nor optimistic about what it does not model: TensorRT's layer fusions (fewer
roundings than here) and kernels that accumulate in fp16 inside a layer (more error than here);
``m2s-export --trt`` on the target measures the built engine the same way (``engine_check``).
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from m2s_export.errors import ExportError

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# names of the model's parameter-free modules whose computations need fp32 (m2s_train.models.igev)
FP32_REGIONS = ("lookup_coords", "candidate_softmax", "softargmin", "disp_update", "upsample_combine", "confidence_cues",
                "confidence_photo")
_REGION = re.compile(r"(?:^|/)(?:%s)(?:_\d+)?/" % "|".join(FP32_REGIONS))  # /model/disp_update_3/Add
# input slots that must stay fp32 whatever the node's precision (ONNX type constraints)
FP32_SLOTS = {"Resize": {1, 2}}  # roi may differ from X; scales is tensor(float) only
DEFAULT_THRESHOLDS = {"mean_abs_diff_px": 0.05, "p99_abs_diff_px": 0.5, "nonfinite_fraction": 0.0}
_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10


def _load(model: Any) -> Any:
    import onnx

    return onnx.load(str(model)) if isinstance(model, (str, Path)) else model


def region_nodes(model: Any) -> list[str]:
    """Names of the nodes inside the model's fp32 regions (:data:`FP32_REGIONS`)."""
    return [n.name for n in _load(model).graph.node if _REGION.search(n.name)]


def _float_tensors(model: Any) -> dict[str, list[int]]:
    """Float32 tensors of the graph (activations, inputs, outputs) with their static shapes."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001  (best effort: fall back to what the file declares)
        log.warning("shape inference failed (%s); using the declared types only", exc)
        inferred = model
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.elem_type == _FLOAT:
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return out


def peak_probe(model: Any, only: set[str] | None = None, exact: bool = False) -> tuple[Any, list[str]]:
    """``model`` with two scalar outputs per float activation (all, or ``only`` these), placed right
    after its producer: its largest magnitude (ReduceMax of Abs) and a NaN/inf flag (the ReduceSum of
    x * 0 is NaN iff any value is). ``exact``: the largest *finite* magnitude instead (IsNaN, IsInf,
    Where: more temporaries; used for the few activations that hold NaN/inf). Only scalars leave the
    graph, so, run in onnxruntime's priority-based order without a memory pattern, the activations are
    freed as in plain inference: 4.3 GB peak RSS for igev-rt at 640x480 over 3 pairs (a fresh process,
    ``benchmarks/bench_export.py --fp16``; 8.8 GB when all 1156 activations were graph outputs).
    Returns the probe and the probed activation names, in order."""
    import onnx

    model = _load(model)
    floats = _float_tensors(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    original = list(g.node)
    del g.node[:]
    zero = onnx.numpy_helper.from_array(np.zeros((), np.float32), "m2s_probe__zero")
    g.initializer.append(zero)
    names = []
    make = onnx.helper.make_node
    for node in original:
        g.node.append(node)
        for t in node.output:
            if t not in floats or (only is not None and t not in only):
                continue
            k = len(names)
            names.append(t)
            p = f"m2s_probe__{k}"
            if exact:
                g.node.extend([
                    make("Abs", [t], [f"{p}_abs"]), make("IsNaN", [t], [f"{p}_nan"]), make("IsInf", [t], [f"{p}_inf"]),
                    make("Or", [f"{p}_nan", f"{p}_inf"], [f"{p}_bad"]),
                    make("Where", [f"{p}_bad", zero.name, f"{p}_abs"], [f"{p}_clean"]),
                    make("ReduceMax", [f"{p}_clean"], [f"{p}_peak"], keepdims=0),
                ])
            else:
                g.node.extend([make("Abs", [t], [f"{p}_abs"]), make("ReduceMax", [f"{p}_abs"], [f"{p}_peak"], keepdims=0)])
            g.node.extend([make("Mul", [t, zero.name], [f"{p}_zero"]),  # 0 where finite, NaN at NaN/inf
                           make("ReduceSum", [f"{p}_zero"], [f"{p}_any"], keepdims=0)])
            g.output.extend([onnx.helper.make_tensor_value_info(f"{p}_peak", _FLOAT, []),
                             onnx.helper.make_tensor_value_info(f"{p}_any", _FLOAT, [])])
    return probe, names


def _run_probe(probe: Any, names: list[str], feeds: list[dict[str, np.ndarray]], threads: int | None
               ) -> tuple[dict[str, float], set[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # the default order runs the probes late: 5 GB
    options.enable_mem_pattern = False  # a pattern planned for the whole probe holds every activation at once
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [f"m2s_probe__{k}_{kind}" for k in range(len(names)) for kind in ("peak", "any")]
    peaks = {name: 0.0 for name in names}
    nonfinite: set[str] = set()
    for feed in feeds:
        values = session.run(outputs, feed)
        for k, name in enumerate(names):
            peaks[name] = max(peaks[name], float(values[2 * k]))
            if not np.isfinite(values[2 * k + 1]):
                nonfinite.add(name)
    return peaks, nonfinite


def activation_peaks(model: Any, feeds: list[dict[str, np.ndarray]], threads: int | None = None) -> dict[str, Any]:
    """Largest finite magnitude of every float activation over ``feeds`` (onnxruntime, CPU), with
    about the memory of one inference (:func:`peak_probe`).

    Returns ``{"peaks": {tensor: max_abs}, "nonfinite": [tensors with NaN/inf], "tensors", "seconds"}``.
    """
    t0 = time.perf_counter()
    model = _load(model)
    probe, names = peak_probe(model)
    peaks, nonfinite = _run_probe(probe, names, feeds, threads)
    if nonfinite:  # their plain maximum is inf/NaN: measure the finite one
        probe, names = peak_probe(model, only=nonfinite, exact=True)
        peaks.update(_run_probe(probe, names, feeds, threads)[0])
    return {"peaks": peaks, "nonfinite": sorted(nonfinite), "tensors": len(peaks),
            "seconds": round(time.perf_counter() - t0, 2)}


def overflow_report(onnx_path: str | Path, inputs: list[dict[str, np.ndarray]], limit: float = FP16_MAX,
                    margin: float = 0.5) -> dict[str, Any]:
    """Activations above ``limit * margin`` on ``inputs``: ``{"flagged": [{"node", "op_type", "tensor",
    "max_abs"}...] (largest first), "max_abs", "tensors", "limit", "margin"}``."""
    model = _load(onnx_path)
    result = activation_peaks(model, inputs)
    producer = {o: n for n in model.graph.node for o in n.output}
    flagged = [{"node": producer[t].name, "op_type": producer[t].op_type, "tensor": t, "max_abs": v}
               for t, v in result["peaks"].items() if v > limit * margin]
    flagged.sort(key=lambda r: -r["max_abs"])
    return {"flagged": flagged, "max_abs": max(result["peaks"].values(), default=0.0), "tensors": result["tensors"],
            "limit": limit, "margin": margin, "seconds": result["seconds"]}


def _large_constants(model: Any, limit: float) -> set[str]:
    from onnx import numpy_helper

    big = {i.name for i in model.graph.initializer
           if i.data_type == _FLOAT and np.abs(numpy_helper.to_array(i)).max(initial=0.0) > limit}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == _FLOAT and np.abs(numpy_helper.to_array(a.t)).max(initial=0) > limit:
                    big.add(n.output[0])
    return big


def fp32_set(model: Any, peaks: dict[str, float] | None = None, limit: float = FP16_MAX,
             margin: float = 0.5) -> dict[str, Any]:
    """The nodes an FP16 engine must keep in fp32 (see the module docstring) and their output tensors.

    Returns ``{"nodes", "tensors", "regions", "overflow": [{"tensor", "max_abs", "producer",
    "consumers"}], "large_constants"}``, every list sorted.
    """
    model = _load(model)
    consumers: dict[str, list[str]] = defaultdict(list)
    producer: dict[str, str] = {}
    for n in model.graph.node:
        for i in n.input:
            if i:
                consumers[i].append(n.name)
        for o in n.output:
            producer[o] = n.name
    nodes = set(region_nodes(model))
    overflow = []
    for tensor, value in sorted((peaks or {}).items()):
        if value > limit * margin:
            group = [producer[tensor]] if tensor in producer else []
            nodes.update(group + consumers[tensor])
            overflow.append({"tensor": tensor, "max_abs": value, "producer": group[0] if group else None,
                             "consumers": sorted(consumers[tensor])})
    big = _large_constants(model, limit)
    for tensor in big:
        nodes.update(consumers[tensor])
    tensors = sorted(o for n in model.graph.node if n.name in nodes for o in n.output if o)
    return {"nodes": sorted(nodes), "tensors": tensors, "regions": list(FP32_REGIONS), "overflow": overflow,
            "large_constants": sorted(big)}


def _rounding_pair(graph: Any, tensor: str, cache: dict[str, str]) -> str:
    """``tensor`` rounded to fp16 and back (Cast pair), made once per tensor."""
    import onnx

    if tensor not in cache:
        half, back = f"{tensor}__fp16", f"{tensor}__fp16r"
        graph.node.append(onnx.helper.make_node("Cast", [tensor], [half], to=_FLOAT16, name=f"{tensor}__cast16"))
        graph.node.append(onnx.helper.make_node("Cast", [half], [back], to=_FLOAT, name=f"{tensor}__cast32"))
        cache[tensor] = back
    return cache[tensor]


def fp16_emulation(model: Any, fp32_nodes: list[str]) -> Any:
    """An fp32 graph that computes like an FP16 engine stores: every float tensor a non-pinned node
    reads (weights included), every tensor it writes that a pinned node reads (the engine stores it
    in fp16 and converts it at the border) and every graph output it writes is rounded to fp16.
    Nodes in ``fp32_nodes`` compute in fp32. Run it with graph optimisations off (see :func:`fp16_check`)."""
    import onnx
    from onnx import numpy_helper

    src = _load(model)
    m = onnx.ModelProto()
    m.CopyFrom(src)
    g = m.graph
    # FP32_ONLY_OPS stay fp32 whatever the fp32 set says (a dynamic-batch export computes positions with Range)
    pinned = set(fp32_nodes) | {n.name for n in g.node if n.op_type in FP32_ONLY_OPS}
    floats = set(_float_tensors(m)) | {i.name for i in g.initializer if i.data_type == _FLOAT}
    rounded_inits: dict[str, str] = {}
    casts: dict[str, str] = {}
    inits = {i.name: i for i in g.initializer}
    original = list(g.node)
    written_in_fp16 = {o for n in original if n.name not in pinned for o in n.output}
    del g.node[:]
    for n in original:
        if n.name in pinned:  # an fp32 layer reads an fp16 layer's output after the engine stored it in fp16
            for k, name in enumerate(n.input):
                if name and name in floats and name in written_in_fp16:
                    n.input[k] = _rounding_pair(g, name, casts)
        else:
            for k, name in enumerate(n.input):
                if not name or name not in floats or k in FP32_SLOTS.get(n.op_type, ()):
                    continue
                if name in inits:  # weights: rounded once, offline
                    if name not in rounded_inits:
                        with np.errstate(over="ignore"):  # beyond the fp16 range -> inf, as an fp16 engine would
                            arr = numpy_helper.to_array(inits[name]).astype(np.float16).astype(np.float32)
                        g.initializer.append(numpy_helper.from_array(arr, f"{name}__fp16r"))
                        rounded_inits[name] = f"{name}__fp16r"
                    n.input[k] = rounded_inits[name]
                else:
                    n.input[k] = _rounding_pair(g, name, casts)
        g.node.append(n)
    producer = {o: n for n in original for o in n.output}
    for out in g.output:  # an output written by an fp16 node is fp16-rounded too (same name)
        node = producer.get(out.name)
        if out.name in floats and node is not None and node.name not in pinned:
            raw = f"{out.name}__raw"
            _rename_tensor(g, out.name, raw)
            g.node.append(onnx.helper.make_node("Cast", [raw], [f"{raw}__fp16"], to=_FLOAT16, name=f"{raw}__cast16"))
            g.node.append(onnx.helper.make_node("Cast", [f"{raw}__fp16"], [out.name], to=_FLOAT, name=f"{raw}__cast32"))
    _topological_sort(g)
    return m


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    for n in graph.node:
        for k, o in enumerate(n.output):
            if o == old:
                n.output[k] = new
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def _topological_sort(graph: Any) -> None:
    """Order ``graph.node`` so each node follows its inputs' producers (appended nodes are out of place)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    by_input: dict[str, list[int]] = defaultdict(list)
    missing = []
    for idx, n in enumerate(pending):
        need = [i for i in n.input if i not in available]
        missing.append(len(set(need)))
        for i in set(need):
            by_input[i].append(idx)
    ready = [i for i, c in enumerate(missing) if c == 0]
    while ready:
        idx = ready.pop()
        node = pending[idx]
        ordered.append(node)
        for o in node.output:
            if o in available:
                continue
            available.add(o)
            for j in by_input.pop(o, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if len(ordered) != len(pending):
        raise ExportError("fp16 conversion produced a graph with a cycle or a dangling input (a bug: please report it)")
    del graph.node[:]
    graph.node.extend(ordered)


# Range: ONNX has no float16 Range (and onnx-tensorrt takes int32/int64/fp32 only). InstanceNormalization: a
# strongly typed network computes a normalisation in its input type, the weakly typed default (and the fp16 check's
# emulation) in fp32; kept fp32 here, the engine computes what the check measured.
FP32_ONLY_OPS = frozenset({"Range", "InstanceNormalization"})


def to_fp16_onnx(model: Any, fp32_nodes: list[str]) -> Any:
    """The mixed-precision model for TensorRT >= 11 (strongly typed): every node computes in fp16
    except ``fp32_nodes``, inputs and outputs stay fp32, Casts sit exactly at the precision borders.

    Initializers shared by an fp16 and an fp32 node get one copy per precision; an initializer or
    constant beyond the fp16 range read by an fp16 node is an error (:func:`fp32_set` pins its
    consumers), never clipped; stale ``value_info`` is dropped and the result is checked with
    ``onnx.checker`` and strict shape inference.
    """
    import onnx
    from onnx import numpy_helper

    src = _load(model)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in src.graph.node for a in n.attribute):
        raise ExportError("fp16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")
    m = onnx.ModelProto()
    m.CopyFrom(src)
    g = m.graph
    # FP32_ONLY_OPS stay fp32 whatever the fp32 set says (a dynamic-batch export computes positions with Range)
    pinned = set(fp32_nodes) | {n.name for n in g.node if n.op_type in FP32_ONLY_OPS}
    floats = set(_float_tensors(m)) | {i.name for i in g.initializer if i.data_type == _FLOAT}
    inits = {i.name: i for i in g.initializer}
    low = {n.name for n in g.node if n.name not in pinned}
    readers: dict[str, set[str]] = defaultdict(set)
    for n in g.node:
        for i in n.input:
            readers[i].add(n.name)
    for n in g.node:  # a constant read by an fp32 node stays exact (fp16 readers get a Cast of it)
        if n.op_type in ("Constant", "ConstantOfShape") and any(r in pinned for o in n.output for r in readers[o]):
            low.discard(n.name)
    kind: dict[str, int] = {name: _FLOAT for name in floats}  # the element type each float tensor ends up with
    for n in g.node:
        if n.name in low:
            for o in n.output:
                if o in floats:
                    kind[o] = _FLOAT16
            if n.op_type == "Cast":
                for a in n.attribute:
                    if a.name == "to" and a.i == _FLOAT:
                        a.i = _FLOAT16
            for a in n.attribute:  # Constant / ConstantOfShape values
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _FLOAT:
                    arr = numpy_helper.to_array(a.t)
                    if np.abs(arr).max(initial=0.0) > FP16_MAX:
                        raise ExportError(f"constant of node {n.name} exceeds the fp16 range; keep the node in fp32")
                    a.t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), a.t.name))
    converted_inits: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}
    new_nodes = []
    for n in list(g.node):
        for k, name in enumerate(n.input):
            if not name or name not in floats:
                continue
            want = _FLOAT16 if n.name in low and k not in FP32_SLOTS.get(n.op_type, ()) else _FLOAT
            if name in inits:
                if want == _FLOAT16:
                    if name not in converted_inits:
                        arr = numpy_helper.to_array(inits[name])
                        if np.abs(arr).max(initial=0.0) > FP16_MAX:
                            raise ExportError(f"initializer {name} (read by {n.name}) exceeds the fp16 range; "
                                              "keep its consumers in fp32")
                        g.initializer.append(numpy_helper.from_array(arr.astype(np.float16), f"{name}__fp16"))
                        converted_inits[name] = f"{name}__fp16"
                    n.input[k] = converted_inits[name]
                continue
            have = kind.get(name, _FLOAT)
            if have != want:
                key = (name, want)
                if key not in casts:
                    casts[key] = f"{name}__to{'16' if want == _FLOAT16 else '32'}"
                    new_nodes.append(onnx.helper.make_node("Cast", [name], [casts[key]], to=want, name=f"{casts[key]}__cast"))
                n.input[k] = casts[key]
    g.node.extend(new_nodes)
    # graph outputs stay fp32: an output written in fp16 is renamed at its producer and cast back
    for out in g.output:
        if kind.get(out.name) == _FLOAT16:
            _rename_tensor(g, out.name, f"{out.name}__fp16")
            g.node.append(onnx.helper.make_node("Cast", [f"{out.name}__fp16"], [out.name], to=_FLOAT,
                                                name=f"{out.name}__out_cast"))
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]  # stale types (onnxslim writes them) would contradict the new ones
    _topological_sort(g)
    try:
        onnx.checker.check_model(m)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"fp16 ONNX is invalid: {str(exc).splitlines()[0]}") from None
    return m


def fp16_onnx(onnx_path: str | Path, out_path: str | Path, keep_fp32_nodes: list[str]) -> Path:
    """:func:`to_fp16_onnx` of a file, written to ``out_path`` with ``precision``/``fp32_nodes`` metadata."""
    import onnx

    converted = to_fp16_onnx(onnx_path, keep_fp32_nodes)
    props = {p.key: p.value for p in converted.metadata_props}
    props["precision"] = "fp16"
    props["fp32_nodes"] = ",".join(keep_fp32_nodes)
    del converted.metadata_props[:]
    for k, v in props.items():
        converted.metadata_props.add(key=k, value=v)
    onnx.save(converted, str(out_path))
    return Path(out_path)


def disparity_drift(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """Per-pixel |candidate - reference| over pairs: mean, p99, max (px) and the fraction of pixels
    that are finite in the reference but not in the candidate."""
    diffs, bad, total = [], 0, 0
    for ref, got in zip(reference, candidate):
        ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
        ok = np.isfinite(ref)
        lost = ok & ~np.isfinite(got)
        bad += int(lost.sum())
        total += int(ok.sum())
        diffs.append(np.abs(got[ok & ~lost] - ref[ok & ~lost]))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    return {"mean_abs_diff_px": float(d.mean()) if d.size else float("nan"),
            "p99_abs_diff_px": float(np.percentile(d, 99)) if d.size else float("nan"),
            "max_abs_diff_px": float(d.max()) if d.size else float("nan"),
            "nonfinite_fraction": bad / max(total, 1), "pairs": len(reference)}


CONFIDENCE_THRESHOLDS = {"mean_abs_diff_px": 0.02, "nonfinite_fraction": 0.0}  # in confidence units


def drift_problems(drift: dict[str, Any], thresholds: dict[str, float] = DEFAULT_THRESHOLDS) -> list[str]:
    """Which thresholds ``drift`` exceeds (non-finite pixels are always a problem), and those of its
    ``confidence`` part against :data:`CONFIDENCE_THRESHOLDS`."""
    out = []
    for key, limit in thresholds.items():
        value = drift.get(key, float("nan"))
        if not np.isfinite(value) or value > limit:
            out.append(f"{key} {value:.4g} > {limit:g}")
    if isinstance(drift.get("confidence"), dict):
        out += [f"confidence {p}" for p in drift_problems(drift["confidence"], CONFIDENCE_THRESHOLDS)]
    return out


def fp16_check(model: Any, fp32_nodes: list[str], feeds: list[dict[str, np.ndarray]], output: str = "disparity",
               threads: int | None = None) -> dict[str, Any]:
    """Run :func:`fp16_emulation` against the fp32 graph on ``feeds``; returns :func:`disparity_drift`
    plus ``seconds`` and what was emulated."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    model = _load(model)
    emulated = fp16_emulation(model, fp32_nodes)
    fast = ort.SessionOptions()
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Cast pair
    for o in (fast, exact):
        o.log_severity_level = 3
        if threads:
            o.intra_op_num_threads = threads
    ref_session = ort.InferenceSession(model.SerializeToString(), fast, providers=["CPUExecutionProvider"])
    emu_session = ort.InferenceSession(emulated.SerializeToString(), exact, providers=["CPUExecutionProvider"])
    names = [output] + [n for n in ("confidence",) if n != output and n in {o.name for o in model.graph.output}]
    refs, gots = [], []
    for feed in feeds:
        refs.append(ref_session.run(names, feed))
        gots.append(emu_session.run(names, feed))
    result = disparity_drift([r[0] for r in refs], [g[0] for g in gots])
    if len(names) > 1:  # the confidence: the same figures (its "px" are confidence units), a problem if non-finite
        result["confidence"] = disparity_drift([r[1] for r in refs], [g[1] for g in gots])
    result.update({"seconds": round(time.perf_counter() - t0, 2), "fp32_nodes": len(fp32_nodes),
                   "method": "onnxruntime CPU, fp16 rounding of every tensor an fp16 layer reads or writes "
                             "(fp16 -> fp32 borders included)"})
    return result


__all__ = ["CONFIDENCE_THRESHOLDS", "DEFAULT_THRESHOLDS", "FP16_MAX", "FP32_REGIONS", "activation_peaks", "disparity_drift", "drift_problems",
           "fp16_check", "fp16_emulation", "fp16_onnx", "fp32_set", "overflow_report", "region_nodes", "to_fp16_onnx"]
