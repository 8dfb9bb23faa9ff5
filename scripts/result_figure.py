"""The picture on the front page: a real pair (Middlebury Aloe, from opencv-doc) through the project's own tools.

    python scripts/result_figure.py CHECKPOINT_OR_MODEL [--out docs/assets/aloe_result.png] [--width 320]

Left image, the model's disparity, its confidence, and the point cloud the node would publish, drawn from 15
degrees to the side of the camera (the camera model back-projects every pixel with a disparity; the points are
splatted nearest-first into a view rotated about the vertical axis). The runtime is the one the node uses
(checkpoint -> PyTorch, .onnx -> onnxruntime, .engine -> TensorRT). The camera is an ideal one with the
Middlebury 2006 rig's baseline (160 mm) and a focal length scaled to the image width: Aloe's published
calibration is for its full-size images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calib import StereoCamera  # noqa: E402
from calib.example_data import require_opencv_examples  # noqa: E402
from calib.figures import confidence_panel, disparity_panel, image_panel, panel_figure  # noqa: E402
from m2s_export.runtime import load_runtime  # noqa: E402


def side_view(points: np.ndarray, colours: np.ndarray, camera: StereoCamera, degrees: float = 15.0) -> np.ndarray:
    """RGB view of the cloud (N,3 metres; N,3 uint8) from a camera turned by ``degrees`` about the vertical axis
    through the cloud's median depth; nearest point wins per pixel, background white."""
    h, w = camera.left.height, camera.left.width
    a = np.deg2rad(degrees)
    centre = np.array([0.0, 0.0, float(np.median(points[:, 2]))])
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    p = (points - centre) @ rot.T + centre
    fx = float(camera.focal_px)
    u = np.round(fx * p[:, 0] / p[:, 2] + w / 2).astype(np.int64)
    v = np.round(fx * p[:, 1] / p[:, 2] + h / 2).astype(np.int64)
    inside = (p[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    u, v, z, c = u[inside], v[inside], p[inside, 2], colours[inside]
    order = np.argsort(-z)  # far first, so that nearer points overwrite them
    image = np.full((h, w, 3), 255, np.uint8)
    for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1)):  # each point a 2x2 splat: no holes between neighbours
        vv, uu = np.minimum(v[order] + dv, h - 1), np.minimum(u[order] + du, w - 1)
        image[vv, uu] = c[order]
    return image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint directory, .onnx or .engine")
    p.add_argument("--out", default=str(ROOT / "docs" / "assets" / "aloe_result.png"))
    p.add_argument("--width", type=int, default=320, help="image width to run at (Aloe is resized), px")
    p.add_argument("--caption", default="", help="what the model is, for the figure title")
    args = p.parse_args()
    data = require_opencv_examples()
    left = cv2.cvtColor(cv2.imread(str(data / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(data / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    h = int(round(left.shape[0] * args.width / left.shape[1]))
    left, right = (cv2.resize(im, (args.width, h), interpolation=cv2.INTER_AREA) for im in (left, right))
    runtime = load_runtime(args.model, **({"input_size": (h // 32 * 32 or 32, args.width // 32 * 32)}
                                         if Path(args.model).is_dir() else {}))
    out = runtime.infer_with_confidence(left, right)
    camera = StereoCamera.ideal(args.width, h, focal_px=3740.0 * args.width / 1282, baseline_m=0.16)
    disparity = np.where(out.disparity > 0, out.disparity, np.nan).astype(np.float32)
    cloud = camera.disparity_to_points(disparity, colors=left, organized=False)  # valid points only, metres
    view = side_view(cloud.points, cloud.colors, camera)
    title = "Aloe (Middlebury, real pair) through Mono2Stereo" + (f": {args.caption}" if args.caption else "")
    panels = [image_panel(left, "left image"), disparity_panel(disparity, "disparity")]
    panels += [confidence_panel(out.confidence)] if out.confidence is not None else []
    panels.append(image_panel(view, "point cloud, seen 15 degrees to the side"))
    panel_figure(args.out, title, panels, columns=2, panel_width=4.2)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
