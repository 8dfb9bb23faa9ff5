"""Quickstart: the Mono2Stereo chain on the embedded default (real Debian opencv-doc data).

Steps run today:
  1. calibrate the real chessboard stereo pairs (13 pairs, 9x6 board) -> camera_info YAML + report;
  2. synthesize a stereo dataset from the ordinary photos of opencv-doc (offline depth prior and
     edge-aware Telea inpainting unless --depth-model / --sd-model point at real weights), with previews;
  3. pre-train the tiny stereo network on it on the CPU for --steps steps (resumable), or with
     --weights FILE.pth --arch igev|rt-igev import a published checkpoint instead (m2s-train import),
     and evaluate it on the real Middlebury Aloe pair (quarter resolution) next to OpenCV SGBM;
  4. export it to ONNX and verify the graph against PyTorch with onnxruntime (engine-ready: build
     the TensorRT engine on the Jetson with m2s-export --trt);
  5. make a rosbag2 (MCAP) of synthesized pairs with exact GT disparity;
  6. replay the bag through the ROS 2 node over real DDS (PyPI ROS 2 wheels) and write the
     report (accuracy, latency, dropped pairs, plots).

Later stages (synthesis, pre-training, evaluation, export, ROS replay) join this script as
they land. Outputs go under --out; a JSON summary is printed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from calib.console import CliParser, add_common_flags, non_negative_float, non_negative_int, positive_int, run_command
from calib.errors import DataError
from calib.example_data import require_opencv_examples
from calib.safe_files import dumps_json, write_json_atomic
from calib.stereo_calibration import Board, calibrate_stereo

ROOT = Path(__file__).resolve().parent.parent
# Photos of opencv-doc that are not stereo/calibration data (kept out of the synthetic set).
NOT_PHOTOS = ("left", "right", "aloe", "chessboard", "board", "calibration", "intrinsics", "mask", "gradient")


def quickstart_photos(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpg", ".png")
                  and not p.name.lower().startswith(NOT_PHOTOS))


def _step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = require_opencv_examples()
    summary: dict[str, object] = {"data": str(data), "out": str(out)}
    t0 = time.perf_counter()

    _step("1. stereo calibration on the real chessboard pairs (opencv-doc left*/right*.jpg, 9x6)")
    camera, report = calibrate_stereo(str(data / "left*.jpg"), str(data / "right*.jpg"),
                                      Board.parse("9x6", 0.025), progress=not args.quiet)
    calib_dir = out / "calib"
    camera.to_dir(calib_dir)
    write_json_atomic(calib_dir / "report.json", report.to_dict())
    print(f"   pairs used: {report.pairs_used} (skipped {len(report.skipped)}: "
          f"{', '.join(Path(s['file'].split(' | ')[0]).name for s in report.skipped) or '-'})", file=sys.stderr)
    print(f"   RMS reprojection error: {report.rms_px:.3f} px; rectified epipolar error: "
          f"{report.epipolar_mean_px:.3f} px mean, {report.epipolar_max_px:.3f} px max", file=sys.stderr)
    print(f"   f = {camera.focal_px:.2f} px, baseline = {camera.baseline_m * 1000:.2f} mm -> {calib_dir}/left.yaml, right.yaml",
          file=sys.stderr)
    summary["calibration"] = {
        "dir": str(calib_dir), "pairs_used": report.pairs_used, "rms_px": report.rms_px,
        "epipolar_mean_px": report.epipolar_mean_px, "focal_px": camera.focal_px, "baseline_m": camera.baseline_m,
    }

    _step("2. synthesize stereo pairs from the ordinary photos of opencv-doc")
    from m2s_train.config import load_config
    from m2s_train.synth.pipeline import SynthConfig, run_synthesis

    if not args.depth_model:
        print("   no Depth Anything weights given: using the offline segment-plane depth prior (procedural depth "
              "on the photos' colour segments, not monocular depth). Pass --depth-model DIR for real depth.",
              file=sys.stderr)
    overrides = {"depth.model": args.depth_model}
    if args.sd_model:
        overrides.update({"inpaint.method": "sd", "inpaint.sd_model": args.sd_model})
    synth_config = load_config(SynthConfig, ROOT / "configs" / "synth" / "quickstart.yaml", overrides)
    photos = quickstart_photos(data)[: args.synth_images]
    synth_dir = out / "synth"
    synth = run_synthesis(photos, synth_dir, synth_config, resume=True, previews=args.previews, progress=not args.quiet)
    print(f"   {synth['written']} new pairs ({synth['already_done']} already there, {len(synth['skipped'])} skipped) "
          f"in {synth['seconds']} s -> {synth_dir}; previews in {synth_dir / 'previews'}", file=sys.stderr)
    summary["synthesis"] = {"dir": str(synth_dir), "pairs": synth["written"] + synth["already_done"],
                            "skipped": len(synth["skipped"]), "depth_model": synth["depth_model"],
                            "inpainter": synth["inpainter"]}

    from m2s_train.evaluate import evaluate
    from m2s_train.models import load_model

    if args.weights:
        _step(f"3. import the published {args.arch} checkpoint {args.weights} and evaluate it on real Aloe")
        checkpoint = import_published(args.weights, args.arch, out / "imported")
        model_name = load_model(checkpoint).model_name
    else:
        config = quickstart_training(args, synth_dir)
        _step(f"3. pre-train {config.model} on the synthesized pairs ({config.steps} steps, CPU) and evaluate on real Aloe")
        checkpoint, seconds = pretrain(args, config, out / "pretrain")
        model_name = config.model
    summary["model"] = {"checkpoint": str(checkpoint), "name": model_name,
                        **({"imported_from": str(args.weights)} if args.weights else
                           {"steps": config.steps, "train_seconds": seconds})}
    model = load_model(checkpoint)
    result = evaluate(model, "aloe:quarter", out=out / "eval_aloe", sgbm=True, error_maps=1, progress=False)
    ours, sgbm = result["methods"]["model"]["pixel"], result["methods"]["sgbm"]["pixel"]
    search = result["search_range"][0]
    print(f"   Aloe (real, quarter res; never seen in training) -> {out / 'eval_aloe' / 'metrics.md'}", file=sys.stderr)
    print(f"   OpenCV SGBM configured fairly: search range {search['px']} px ({search['from']}), the left band "
          "answered (the pair padded on the left by the range)", file=sys.stderr)
    for name, key in ((model_name, "model"), ("OpenCV SGBM", "sgbm")):
        every, full = result["methods"][key]["pixel"], result["methods"][key]["full_search"]
        print(f"     {name:<12} all GT pixels: EPE {every['epe']:5.2f} px  bad-3 {100 * every['bad3']:5.1f} %   "
              f"x >= {search['px']} px: EPE {full['epe']:5.2f} px  bad-3 {100 * full['bad3']:5.1f} %", file=sys.stderr)
    behind = [label for key, label in (("epe", "EPE"), ("bad3", "bad-3")) if ours[key] >= sgbm[key]]
    print(f"   {model_name} is " + (f"behind the fair SGBM on {' and '.join(behind)}" if behind else
                                    "ahead of the fair SGBM on EPE and bad-3"), file=sys.stderr)
    if not args.weights:
        print("   (a 0.4 M-parameter model trained for minutes on a CPU, on procedural depth, not monocular depth; a "
              "fairly configured SGBM is level with a supervised network on textured pairs like this one "
              "(docs/measured.md): for real accuracy import a published checkpoint (--weights), or pre-train igev / "
              "igev-rt on a GPU with Depth Anything depth)", file=sys.stderr)
    summary["eval_aloe_quarter"] = {"model": ours, "sgbm": sgbm}

    _step("4. export to ONNX and verify against PyTorch with onnxruntime")
    from m2s_export.onnx_export import export_onnx

    onnx_path = out / "model" / f"{model_name}_{args.export_height}x{args.export_width}.onnx"
    meta = export_onnx(checkpoint, onnx_path, args.export_height, args.export_width)
    worst = max(r["mean_abs_px"] for r in meta["export_report"]["verification"])
    print(f"   {onnx_path} ({meta['export_report']['nodes']} nodes, {meta['iters']} iterations); "
          f"onnxruntime vs PyTorch: mean |Δd| <= {worst:.2e} px on Aloe + textures", file=sys.stderr)
    print("   on the Jetson: m2s-export --trt --onnx " + str(onnx_path) + " --engine model.engine --fp16", file=sys.stderr)
    summary["onnx"] = {"path": str(onnx_path), "max_mean_abs_diff_px": worst}

    _step("5. make a rosbag2 (MCAP) of synthesized pairs with ground truth")
    from m2s_stereo.bag_tools import frames_from_synth, write_bag
    import itertools

    bag = out / "bag"
    remove_earlier_bag(bag)
    n = write_bag(bag, itertools.islice(frames_from_synth(synth_dir, 10.0, 1_700_000_000 * 10**9, None, 0.1),
                                        args.bag_frames), storage="mcap")
    print(f"   {n} frames -> {bag}", file=sys.stderr)

    _step("6. replay the bag through the ROS 2 node (live, real DDS on loopback) and report")
    from m2s_stereo.replay import run_live, write_report

    report = write_report(run_live(bag, str(onnx_path), rate=args.replay_rate, progress=not args.quiet), out / "replay")
    acc = report["accuracy"].get("disparity", {})
    lat = report.get("latency_summary_ms", {})
    print(f"   {report['answered']}/{report['frames']} pairs answered ({report['dropped']} dropped), latency median "
          f"{lat.get('median', float('nan')):.0f} ms, EPE {acc.get('epe', float('nan')):.2f} px -> {out / 'replay' / 'report.md'}",
          file=sys.stderr)
    summary["replay"] = {"report": str(out / "replay" / "report.md"), "answered": report["answered"],
                         "dropped": report["dropped"], "latency_ms": lat, "disparity": acc}

    print("\nWhat this offline default cannot do: no pretrained Depth Anything / Stable Diffusion weights (procedural "
          "depth prior + EA Telea instead), no GPU (a 0.4 M-parameter model trained for minutes). For real results: "
          "--depth-model DIR [--sd-model DIR], pre-train igev-rt on a GPU (m2s-train pretrain), fine-tune with S2DKD, "
          "and build the TensorRT engine on the target.", file=sys.stderr)
    print(f"Outputs: calibration {calib_dir}, dataset {synth_dir}, checkpoint {checkpoint}, engine-ready ONNX "
          f"{onnx_path}, bag {bag}, replay report {out / 'replay'}", file=sys.stderr)

    summary["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(out / "summary.json", summary)
    print(dumps_json(summary, indent=2))
    return 0


def remove_earlier_bag(bag: Path) -> None:
    """The bag an earlier quickstart wrote (metadata.yaml and .mcap files, nothing else) goes before a new one;
    a folder holding anything else is refused, never deleted."""
    if not bag.exists() and not bag.is_symlink():
        return
    files = list(bag.iterdir()) if bag.is_dir() and not bag.is_symlink() else []
    ours = bool(files) and all(f.is_file() and not f.is_symlink() and (f.name == "metadata.yaml" or f.suffix == ".mcap")
                               for f in files)
    if not ours:
        raise DataError(f"{bag} is not a bag an earlier quickstart wrote (metadata.yaml + .mcap files only): move it "
                        "away or choose another --out (it is not deleted)")
    for f in files:
        f.unlink()
    bag.rmdir()


def import_published(weights: str, arch: str, target: Path) -> Path:
    """``m2s-train import`` of the user's published checkpoint (once: an earlier import of the same file is reused)."""
    from m2s_train.models.published import import_checkpoint, read_card, sha256_of

    if target.exists():
        card = read_card(target) or {}
        if card.get("source", {}).get("sha256") == sha256_of(Path(weights)):
            print(f"   already imported -> {target}", file=sys.stderr)
            return target
    report = import_checkpoint(weights, arch, target, overwrite=target.exists())
    print(f"   {report['source_tensors']} tensors read, {report['mapped']} mapped, {report['aliases']} duplicates "
          f"checked, {len(report['dropped'])} unused dropped -> {target} (model card: {target / 'MODEL_CARD.md'})",
          file=sys.stderr)
    print(f"   trained on: {report['trained_on']}", file=sys.stderr)
    return target


def quickstart_training(args: argparse.Namespace, synth_dir: Path):
    """configs/train/quickstart.yaml on the quickstart's pairs, with --model / --steps where given."""
    from m2s_train.config import load_config
    from m2s_train.train import TrainConfig

    overrides = {"model": args.model, "datasets": [f"synth:{synth_dir}"], "steps": args.steps}
    if args.steps is not None:
        overrides["checkpoint_every"] = max(args.steps // 4, 1)
    if args.model is not None and args.model != "igev-tiny":
        overrides["model_overrides"] = {}  # the file's max_disp is igev-tiny's; another model keeps its own
    return load_config(TrainConfig, ROOT / "configs" / "train" / "quickstart.yaml", overrides)


def pretrain(args: argparse.Namespace, config, run_dir: Path) -> tuple[Path, float | None]:
    """The short CPU pre-training (resumable); its checkpoint and the seconds it took (None when an
    earlier, finished run was reused)."""
    from m2s_train.train import latest_checkpoint, train

    t0 = time.perf_counter()
    trained = train(config, run_dir, resume=True, device="cpu", progress=not args.quiet)
    seconds = time.perf_counter() - t0 if trained["first_loss"] is not None else None
    checkpoint = latest_checkpoint(run_dir)
    if seconds is None:
        print(f"   already trained ({trained['steps']} steps) -> {checkpoint}", file=sys.stderr)
    else:
        print(f"   trained {trained['steps']} steps in {seconds / 60:.1f} min (loss {trained['first_loss']:.2f} -> "
              f"{trained['last_loss']:.2f}) -> {checkpoint}", file=sys.stderr)
    return checkpoint, seconds


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="quickstart_out", help="output directory (default: quickstart_out)")
    parser.add_argument("--depth-model", help="Depth Anything V2 directory (default: offline depth prior)")
    parser.add_argument("--sd-model", help="Stable Diffusion inpainting directory (default: EA Telea)")
    parser.add_argument("--synth-images", type=positive_int, default=64, help="photos to synthesize from (default: 64)")
    parser.add_argument("--previews", type=non_negative_int, default=8, help="preview PNGs to write (default: 8)")
    parser.add_argument("--model", help="stereo network to pre-train (default: configs/train/quickstart.yaml's, igev-tiny)")
    parser.add_argument("--weights", help="a published checkpoint (.pth, e.g. the authors' IGEV-Stereo sceneflow.pth) "
                                          "to import and run the chain on instead of pre-training (needs --arch)")
    parser.add_argument("--arch", choices=["igev", "rt-igev"], help="architecture of --weights")
    parser.add_argument("--steps", type=positive_int,
                        help="pre-training steps (default: configs/train/quickstart.yaml's, 600: ~5 min on 2 cores)")
    parser.add_argument("--export-height", type=positive_int, default=192, help="ONNX input height, px (default: 192)")
    parser.add_argument("--export-width", type=positive_int, default=256, help="ONNX input width, px (default: 256)")
    parser.add_argument("--bag-frames", type=positive_int, default=12, help="frames in the replay bag (default: 12)")
    parser.add_argument("--replay-rate", type=non_negative_float, default=1.0,
                        help="replay speed x recorded 10 Hz; 0 = as fast as the node answers (default: 1)")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    if bool(args.weights) != bool(args.arch):
        parser.error("--weights and --arch go together: --weights FILE.pth --arch igev|rt-igev")
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
