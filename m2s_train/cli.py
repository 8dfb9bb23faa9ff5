"""``m2s-train``: synth | pretrain | cache-mono | finetune | import | eval."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from calib.console import (
    CliParser,
    add_common_flags,
    bounded,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from calib.safe_files import dumps_json
from m2s_train.config import load_config
from m2s_train.errors import ConfigError


def _synth_frames(args: argparse.Namespace, written: list[Path]) -> tuple[list[Path], Path, dict]:
    """The images to synthesize from: photos (--images), or frames of a bag topic / a video, extracted once."""
    from m2s_train.synth.pipeline import image_root, list_images
    from m2s_train.synth.sources import FrameSelection, bag_image_topic, extract_bag_frames, extract_video_frames

    given = [flag for flag, value in (("--images", args.images), ("--bag", args.bag), ("--video", args.video)) if value]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of --images, --bag, --video (got {', '.join(given) or 'none'})")
    if args.images:
        return list_images(args.images), image_root(args.images), {}
    try:
        selection = FrameSelection(every=args.every, start=args.start, end=args.end, min_change=args.min_change)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.bag:
        args.topic = bag_image_topic(args.bag, args.topic)
        found = extract_bag_frames(args.bag, args.topic, args.out, selection, progress=not args.quiet, written=written)
    else:
        found = extract_video_frames(args.video, args.out, selection, progress=not args.quiet, written=written)
    info = {k: found[k] for k in ("source", "seen", "near_duplicates", "repeated_stamps") if k in found}
    return found["frames"], found["root"], info


def _warn_wide_range(camera, depth_range: tuple[float, float], width: float) -> None:
    """Name a --depth-range whose near end gives disparities beyond half the synthesized image's width (no
    stereo network of this project searches that far; 170 px on a 256-px image went by without a word)."""
    import logging

    near = float(camera.focal_px) * float(camera.baseline_m) / depth_range[0] * width / camera.left.width
    if near > width / 2:
        logging.getLogger("m2s-train").warning(
            "--depth-range from %g m gives disparities up to %.0f px on these %.0f-px wide images, more than half "
            "the width: the models search 64-192 px (see their max_disp); nearer than %.2f m is beyond them. "
            "Raise MIN, or synthesize larger images (--max-side)", depth_range[0], near, width,
            float(camera.focal_px) * float(camera.baseline_m) * width / camera.left.width / (width / 2))


def _camera_range(args: argparse.Namespace) -> tuple[dict, object | None]:
    """``camera.*`` overrides from --camera / --depth-range (or the bag's camera_info), and the camera."""
    if args.depth_range is None:
        if args.camera:
            raise ConfigError("--camera needs --depth-range MIN MAX (metres): the range the disparities should cover")
        return {}, None
    lo, hi = args.depth_range
    if not 0 < lo < hi:
        raise ConfigError(f"--depth-range needs 0 < MIN < MAX metres, got {lo:g} {hi:g}")
    from calib import StereoCamera

    if args.camera:
        camera = StereoCamera.from_dir(args.camera)
    elif args.bag:
        from m2s_train.synth.sources import bag_camera

        camera = bag_camera(args.bag, args.topic)
    else:
        raise ConfigError("--depth-range needs the camera: --camera DIR (left.yaml / right.yaml) or a --bag with "
                          "camera_info")
    return {"camera.focal_px": float(camera.focal_px), "camera.baseline_m": float(camera.baseline_m),
            "camera.width": int(camera.left.width), "camera.min_depth": lo, "camera.max_depth": hi}, camera


def _synth(args: argparse.Namespace) -> int:
    from m2s_train.synth.pipeline import SynthConfig, run_synthesis, shard_from_env

    camera_overrides, camera = _camera_range(args)
    config = load_config(SynthConfig, args.config, {
        **camera_overrides,
        "seed": args.seed,
        "depth.backend": args.depth_backend,
        "depth.model": args.depth_model,
        "depth.precomputed_dir": args.depth_dir,
        "depth.precomputed_kind": args.depth_kind,
        "depth.device": args.device,
        "depth.batch_size": args.batch_size,
        "disparity.min_max_disparity": args.min_disp,
        "disparity.max_max_disparity": args.max_disp,
        "inpaint.method": args.inpaint,
        "inpaint.edge_aware": False if args.no_ea else None,
        "inpaint.sd_model": args.sd_model,
        "max_side": args.max_side,
    })
    out_existed = Path(args.out).exists()
    written: list[Path] = []  # frames this run extracted: removed again if the run cannot use them
    try:
        images, root, frames = _synth_frames(args, written)
        if camera is not None:  # the camera must be the one that took the images (at any scale, the same shape)
            from calib.image_io import read_rgb

            h, w = read_rgb(images[0]).shape[:2]
            cam_w, cam_h = camera.left.width, camera.left.height
            if abs(cam_h * w / cam_w - h) > 1:
                raise ConfigError(f"the camera_info is {cam_w}x{cam_h} but the images are {w}x{h}: not the camera "
                                  "that took them (or not the same crop); give the right --camera")
            _warn_wide_range(camera, args.depth_range, min(w, config.max_side if w >= h else w * config.max_side / h))
    except BaseException:  # an error or Ctrl-C before any sample: leave --out as it was
        from m2s_train.synth.sources import remove_written

        remove_written(written, Path(args.out) / "frames")
        if not out_existed and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()
        raise
    try:
        summary = run_synthesis(images, args.out, config, shard=shard_from_env(args.shard), resume=args.resume,
                                previews=args.preview, progress=not args.quiet, limit=args.limit, root=root)
        if summary["assigned"] and not (summary["written"] or summary["already_done"]):  # a dataset of nothing
            from m2s_train.errors import DatasetError

            first = summary["skipped"][0] if summary["skipped"] else {"file": "?", "reason": "?"}
            raise DatasetError(f"no sample was written: all {summary['assigned']} image(s) of this shard were skipped "
                               f"(the first, {first['file']}: {first['reason']}); see the warnings above")
    except BaseException:  # a run that made --out and wrote nothing usable leaves nothing (one process only:
        # under torchrun another rank may be writing into the same new folder)
        if not out_existed and int(os.environ.get("WORLD_SIZE", "1")) == 1 and Path(args.out).is_dir() and \
                not any(Path(args.out).glob("samples/*.npz")):
            import shutil

            shutil.rmtree(args.out)  # it did not exist before this command: everything in it is this run's
        raise
    print(dumps_json({k: (len(v) if k == "skipped" else v) for k, v in summary.items()} | ({"frames": frames} if frames else {})))
    return 0


_RUN_FIELDS = ("model", "init", "steps", "batch_size", "lr", "seed", "num_workers", "checkpoint_every", "crop")


def _run_overrides(args: argparse.Namespace, prefix: str = "") -> dict:
    """TrainConfig overrides from the flags pretrain and finetune share (absent flags -> None)."""
    out = {prefix + f: getattr(args, f, None) for f in _RUN_FIELDS}
    out[prefix + "datasets"] = args.dataset
    return out


def _print_on_rank0(summary: dict) -> None:
    if os.environ.get("RANK", "0") == "0":  # one summary line per torchrun job, not one per process
        print(dumps_json(summary))


def _pretrain(args: argparse.Namespace) -> int:
    from m2s_train.train import TrainConfig, train

    overrides = {**_run_overrides(args), "train_iters": args.train_iters,
                 "freeze_bn": True if args.freeze_bn else None, "mixed_precision": False if args.no_amp else None}
    config = load_config(TrainConfig, args.config, overrides)
    _print_on_rank0(train(config, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                          progress=not args.quiet))
    return 0


def _finetune_config(args: argparse.Namespace):
    from m2s_train.finetune import FinetuneConfig

    return load_config(FinetuneConfig, args.config, {
        **_run_overrides(args, "train."),
        "s2dkd.enabled": False if getattr(args, "no_s2dkd", False) else None,
        "s2dkd.lambda_kd": getattr(args, "lambda_kd", None), "s2dkd.lambda_grad": getattr(args, "lambda_grad", None),
        "s2dkd.width": getattr(args, "kd_width", None), "sparsify": getattr(args, "sparsify", None),
        "s2dkd.lambda_dense": getattr(args, "lambda_dense", None), "s2dkd.dense_width": getattr(args, "dense_width", None),
        "teacher_cache": args.teacher_cache, "depth.backend": args.depth_backend, "depth.model": args.depth_model,
        "depth.precomputed_dir": args.depth_dir, "depth.device": args.device if args.device != "auto" else None,
    })


def _cache_mono(args: argparse.Namespace) -> int:
    from m2s_train.finetune import cache_mono

    print(dumps_json(cache_mono(_finetune_config(args), progress=not args.quiet)))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from m2s_train.finetune import run_finetune

    _print_on_rank0(run_finetune(_finetune_config(args), args.out, resume=args.resume, overwrite=args.overwrite,
                                 device=args.device, progress=not args.quiet))
    return 0


def _import(args: argparse.Namespace) -> int:
    from m2s_train.models.published import import_checkpoint

    print(dumps_json(import_checkpoint(args.checkpoint, args.arch, args.out, trained_on=args.trained_on,
                                       overwrite=args.overwrite)))
    return 0


def _run_flags(p: argparse.ArgumentParser, out_help: str) -> None:
    """Flags of a training run, shared by pretrain and finetune (map to TrainConfig fields)."""
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's newest intact checkpoint (damaged newer ones are set aside)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds a run: delete its checkpoints, TensorBoard events and summary (nothing else) once the new "
                        "run's init and data have loaded, then start again")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, help="pairs per step and process")
    p.add_argument("--crop", type=bounded_crop, nargs=2, metavar=("H", "W"), help="random crop size, px (>= 32)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--seed", type=non_negative_int, help="seed for weights, sample order and augmentation")
    p.add_argument("--num-workers", type=non_negative_int, help="data loader worker processes per training process")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints")


def _teacher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (configs/train/finetune_*.yaml)")
    p.add_argument("--dataset", action="append", help="kind:path (kitti2015, kitti2012, synth, middlebury, ...); repeatable")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--init", help="pre-trained checkpoint directory to fine-tune")
    p.add_argument("--teacher-cache", help="directory of the cached monocular teacher maps")
    p.add_argument("--depth-backend", choices=["auto", "depth-anything", "precomputed", "segment-prior"],
                   help="monocular teacher backend")
    p.add_argument("--depth-model", help="Depth Anything V2 directory or cached Hugging Face id")
    p.add_argument("--depth-dir", help="precomputed teacher maps <stem>.npy (with --depth-backend precomputed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")


bounded_crop = bounded(int, ge=32)


def _eval(args: argparse.Namespace) -> int:
    from m2s_train.evaluate import evaluate
    from m2s_train.models import load_model

    if not args.checkpoint and not args.sgbm and not args.wls:
        raise ConfigError("nothing to evaluate: give --checkpoint DIR and/or --sgbm / --wls")
    claim = None
    if args.out is not None:
        from calib.safe_files import OwnedOutput

        claim = OwnedOutput(args.out, tool="m2s-train eval", overwrite=args.overwrite,
                            inputs=(args.checkpoint, *(_dataset_path(s) for s in args.dataset)))
    model = load_model(args.checkpoint) if args.checkpoint else None
    if claim is not None:  # the earlier report goes only once the inputs are known to be good
        from m2s_train.data.stereo_datasets import build_dataset

        for spec in args.dataset:
            build_dataset(spec)
        claim.begin()
    results = []
    for i, spec in enumerate(args.dataset):
        out = None if args.out is None else f"{args.out}/{i:02d}_{spec.split(':')[0]}"
        result = evaluate(model, spec, iters=args.iters, out=out, error_maps=args.error_maps, sgbm=args.sgbm, wls=args.wls,
                          device=args.device, progress=not args.quiet, max_images=args.max_images,
                          label_free=args.label_free)
        results.append({"dataset": spec, **{k: v["pixel"] for k, v in result["methods"].items()},
                        **({"label_free": {k: v["label_free"] for k, v in result["methods"].items() if "label_free" in v}}
                           if args.label_free else {})})
    if claim is not None:
        claim.finish()
    print(dumps_json(results))
    return 0


def _dataset_path(spec: str) -> str | None:
    """The path of a ``kind:path`` dataset spec (None for a built-in pair such as ``aloe:quarter``)."""
    kind, _, rest = spec.partition(":")
    return rest if rest and ("/" in rest or Path(rest).exists()) else None


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="m2s-train", description="Mono2Stereo training pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth", help="synthesize stereo pairs with exact disparity from single images",
        description="Monocular depth -> disparity (MfS scaling) -> forward warp -> edge-aware inpainting -> "
                    "dataset of samples/*.npz + manifests. Flags override the YAML config. Under torchrun, "
                    "each rank takes its share of the images (RANK/WORLD_SIZE).")
    p.add_argument("--images", help="directory (recursive) or quoted glob of input photos")
    p.add_argument("--bag", help="a rosbag2 (sqlite3 or MCAP) recorded on the robot: synthesize from --topic")
    p.add_argument("--topic",
                   help="--bag: the image topic (sensor_msgs/Image in any encoding the node takes, or CompressedImage; "
                        "default: the stereo pair's left image, found as m2s-eval-bag finds it, or the only image topic)")
    p.add_argument("--video", help="a video file (OpenCV) to synthesize from")
    p.add_argument("--every", type=positive_int, default=1, help="--bag/--video: keep every N-th frame (default 1)")
    p.add_argument("--start", type=non_negative_float, default=0.0, help="--bag/--video: from S seconds in")
    p.add_argument("--end", type=non_negative_float, help="--bag/--video: up to S seconds in")
    p.add_argument("--min-change", type=non_negative_float, default=2.0,
                   help="--bag/--video: skip a frame whose mean difference to the last kept one is below this many grey "
                        "levels (a robot standing still); 0 keeps every frame (default 2)")
    p.add_argument("--camera", help="camera_info YAML directory (m2s-calib): camera-matched disparities, with --depth-range")
    p.add_argument("--depth-range", type=positive_float, nargs=2, metavar=("MIN", "MAX"),
                   help="metres: synthesized disparities cover f*B/MAX .. f*B/MIN px of --camera (or the bag's "
                        "camera_info) instead of the generic draw")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--config", help="YAML config (configs/synth/*.yaml); defaults if omitted")
    p.add_argument("--depth-backend", choices=["auto", "depth-anything", "precomputed", "segment-prior"],
                   help="monocular depth source; auto: depth-anything if --depth-model, else the offline prior")
    p.add_argument("--depth-model", help="Depth Anything V2 directory or cached Hugging Face id (never downloaded)")
    p.add_argument("--depth-dir", help="directory of precomputed <stem>.npy / 16-bit <stem>.png maps")
    p.add_argument("--depth-kind", choices=["inverse_depth", "depth"], help="what the precomputed maps hold")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N for the depth and diffusion models")
    p.add_argument("--batch-size", type=positive_int, help="images per depth forward pass")
    p.add_argument("--min-disp", type=positive_float, help="lower bound of the sampled maximum disparity, px")
    p.add_argument("--max-disp", type=positive_float, help="upper bound of the sampled maximum disparity, px")
    p.add_argument("--inpaint", choices=["telea", "ns", "sd"], help="hole filler on the edge-aware mask")
    p.add_argument("--no-ea", action="store_true",
                   help="fill the plain hole mask as it is, without the edge-aware mask and background context "
                        "(the ablation of the EA step; benchmarks/bench_ea.py)")
    p.add_argument("--sd-model", help="Stable Diffusion inpainting weights directory (for --inpaint sd)")
    p.add_argument("--max-side", type=bounded(int, ge=16, le=16384),
                   help="downscale images whose longer side exceeds this, px")
    p.add_argument("--seed", type=non_negative_int, help="global seed (per-sample draws also depend on the image bytes)")
    p.add_argument("--shard", help="i/n: process images k with k %% n == i (default: torchrun RANK/WORLD_SIZE)")
    p.add_argument("--resume", action="store_true", help="continue a killed run; finished samples are kept")
    p.add_argument("--preview", type=non_negative_int, default=0, metavar="N",
                   help="write side-by-side preview PNGs for the first N new samples")
    p.add_argument("--limit", type=non_negative_int, help="process at most this many images of this shard")
    add_common_flags(p)
    p.set_defaults(handler=_synth)

    p = sub.add_parser(
        "pretrain", help="train a stereo network (pre-training on synthesized or any GT data)",
        description="Sequence-loss training with AdamW + one-cycle, gradient clipping, mixed precision on CUDA, "
                    "checkpoints every N steps (safetensors + optimizer/scheduler/RNG state). Flags override the "
                    "YAML config. Multi-GPU / multi-node: torchrun --nproc-per-node N -m m2s_train.cli pretrain ...")
    p.add_argument("--config", help="YAML config (configs/train/*.yaml)")
    _run_flags(p, "run directory: checkpoints/, tensorboard/, train_summary.json")
    p.add_argument("--model", help="registered model name (igev, igev-rt, rt-igev, igev-tiny)")
    p.add_argument("--init", help="checkpoint directory to initialise the weights from")
    p.add_argument("--dataset", action="append",
                   help="kind:path[:half] (synth, sceneflow, kitti2012, kitti2015, middlebury, eth3d, folder), or a "
                        "built-in real pair with GT: aloe[:half|:quarter] (opencv-doc), motorcycle[:half] "
                        "(scikit-image); repeatable")
    p.add_argument("--train-iters", type=positive_int, help="GRU iterations during training (default: the model's)")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    add_common_flags(p)
    p.set_defaults(handler=_pretrain)

    p = sub.add_parser("cache-mono", help="compute and cache the monocular teacher of a fine-tuning dataset",
                       description="Runs the depth backend once per left image and caches relative inverse depth "
                                   "under --teacher-cache (keyed by image content and model id); rerun to resume.")
    _teacher_flags(p)
    add_common_flags(p)
    p.set_defaults(handler=_cache_mono)

    p = sub.add_parser(
        "finetune", help="fine-tune on sparse labels with Sparse-to-Dense Knowledge Distillation (S2DKD)",
        description="Sparse sequence loss + lambda_kd * KL(teacher Laplacian || candidate distribution) on unlabelled "
                    "pixels + lambda_grad * L1 of disparity gradients vs the aligned monocular teacher. The teacher "
                    "cache is filled first (see cache-mono). --no-s2dkd gives plain sparse fine-tuning.")
    _teacher_flags(p)
    _run_flags(p, "run directory: checkpoints/, tensorboard/, train_summary.json")
    p.add_argument("--sparsify", choices=["lidar-like", "scan"],
                   help="turn dense GT into sparse labels: lidar-like (lines 4 rows apart, ~18 %% of the pixels) or scan "
                        "(one 64-beam LiDAR sweep as KITTI has it, ~5 %%)")
    p.add_argument("--no-s2dkd", action="store_true", help="sparse loss only (the ablation baseline)")
    p.add_argument("--lambda-kd", type=non_negative_float, help="weight of the KL distillation term")
    p.add_argument("--lambda-grad", type=non_negative_float, help="weight of the gradient (structure) term")
    p.add_argument("--kd-width", type=positive_float, help="Laplacian width of the target distribution, candidates")
    p.add_argument("--lambda-dense", type=non_negative_float,
                   help="weight of the full-resolution distillation of every iteration's prediction (Laplacian KL)")
    p.add_argument("--dense-width", type=positive_float, help="Laplacian scale of the full-resolution distillation, px")
    add_common_flags(p)
    p.set_defaults(handler=_finetune)

    p = sub.add_parser(
        "import", help="convert a published checkpoint (IGEV-Stereo, RT-IGEV++ .pth) into a Mono2Stereo checkpoint",
        description="Reads the authors' .pth without running code from it (torch.load weights_only=True; a file "
                    "that needs unpickling of code is refused), with or without DataParallel's 'module.' prefix, "
                    "bare or under 'state_dict'/'model'; maps every tensor onto the registry model by an explicit "
                    "table (every source tensor used, every target filled, shapes checked) and writes --out: "
                    "model.safetensors + model.json + model_card.json + MODEL_CARD.md (source sha256, training "
                    "data, licence). The result computes what the authors' code computes with the same weights, "
                    "their InputPadder(divis_by=32) included. Use it anywhere a checkpoint goes: eval, finetune "
                    "--init, pretrain --init, m2s-export.")
    p.add_argument("checkpoint", help="the published .pth file (e.g. sceneflow.pth)")
    p.add_argument("--arch", required=True, choices=["igev", "rt-igev"],
                   help="igev: IGEV-Stereo (gangweiX/IGEV); rt-igev: RT-IGEV++ (gangweiX/IGEV-plusplus, core_rt)")
    p.add_argument("--out", required=True, help="checkpoint directory to create (refused if it exists)")
    p.add_argument("--trained-on", help="what the weights were trained on, for the model card (default: from the "
                                        "published file name, e.g. sceneflow.pth -> Scene Flow only)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds a model this command imported: replace its files once the new one is complete "
                        "(nothing else in --out is deleted)")
    add_common_flags(p)
    p.set_defaults(handler=_import)

    p = sub.add_parser(
        "eval", help="EPE / D1 / bad-1,2,3 of a checkpoint (and OpenCV SGBM) on datasets with GT",
        description="Per-image and aggregate metrics; writes metrics.json and metrics.md per dataset (and error "
                    "maps) under --out. 'aloe' and 'motorcycle' are built-in real Middlebury pairs (opencv-doc's Aloe, "
                    "scikit-image's Motorcycle; ':half' halves them).")
    p.add_argument("--checkpoint", help="checkpoint directory (model.safetensors + model.json)")
    p.add_argument("--dataset", action="append", required=True, help="kind:path[:half], aloe[:half] or motorcycle[:half]; repeatable")
    p.add_argument("--iters", type=positive_int, help="GRU iterations (default: the model's valid_iters)")
    p.add_argument("--sgbm", action="store_true",
                   help="also evaluate OpenCV StereoSGBM on the same pairs, fairly configured: its search range the "
                        "pair's GT maximum rounded up to 16 px (without GT: the model's range), the left band answered "
                        "(the pair padded on the left by the range)")
    p.add_argument("--wls", action="store_true",
                   help="also SGBM + OpenCV's WLS filter (needs opencv-contrib-python-headless for cv2.ximgproc)")
    p.add_argument("--label-free", action="store_true",
                   help="also the figures that need no GT: photometric error of the right view warped by the "
                        "disparity, left-right consistency (a second pass on the mirrored pair), range limits")
    p.add_argument("--out", help="directory for metrics.json / metrics.md / error maps")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier report of this command: replace the files it wrote, once the inputs "
                        "are checked (nothing else in --out is deleted; without this flag it is refused)")
    p.add_argument("--error-maps", type=non_negative_int, default=0, metavar="N",
                   help="write error-map PNGs for the first N pairs")
    p.add_argument("--max-images", type=positive_int, help="evaluate at most N pairs per dataset")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    add_common_flags(p)
    p.set_defaults(handler=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
