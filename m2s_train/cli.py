"""``m2s-train``: synthesis (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import json
import sys

from calib.console import add_common_flags, run_command
from m2s_train.config import load_config


def _synth(args: argparse.Namespace) -> int:
    from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis, shard_from_env

    config = load_config(SynthConfig, args.config, {
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
        "inpaint.sd_model": args.sd_model,
        "max_side": args.max_side,
    })
    summary = run_synthesis(list_images(args.images), args.out, config, shard=shard_from_env(args.shard),
                            resume=args.resume, previews=args.preview, progress=not args.quiet, limit=args.limit)
    print(json.dumps({k: (len(v) if k == "skipped" else v) for k, v in summary.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2s-train", description="Mono2Stereo training pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "synth", help="synthesize stereo pairs with exact disparity from single images",
        description="Monocular depth -> disparity (MfS scaling) -> forward warp -> edge-aware inpainting -> "
                    "dataset of samples/*.npz + manifests. Flags override the YAML config. Under torchrun, "
                    "each rank takes its share of the images (RANK/WORLD_SIZE).")
    p.add_argument("--images", required=True, help="directory (recursive) or quoted glob of input photos")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--config", help="YAML config (configs/synth/*.yaml); defaults if omitted")
    p.add_argument("--depth-backend", choices=["auto", "depth-anything", "precomputed", "segment-prior"],
                   help="monocular depth source; auto: depth-anything if --depth-model, else the offline prior")
    p.add_argument("--depth-model", help="Depth Anything V2 directory or cached Hugging Face id (never downloaded)")
    p.add_argument("--depth-dir", help="directory of precomputed <stem>.npy / 16-bit <stem>.png maps")
    p.add_argument("--depth-kind", choices=["inverse_depth", "depth"], help="what the precomputed maps hold")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N for the depth and diffusion models")
    p.add_argument("--batch-size", type=int, help="images per depth forward pass")
    p.add_argument("--min-disp", type=float, help="lower bound of the sampled maximum disparity, px")
    p.add_argument("--max-disp", type=float, help="upper bound of the sampled maximum disparity, px")
    p.add_argument("--inpaint", choices=["telea", "ns", "sd"], help="hole filler on the edge-aware mask")
    p.add_argument("--sd-model", help="Stable Diffusion inpainting weights directory (for --inpaint sd)")
    p.add_argument("--max-side", type=int, help="downscale images whose longer side exceeds this, px")
    p.add_argument("--seed", type=int, help="global seed (per-sample draws also depend on the image bytes)")
    p.add_argument("--shard", help="i/n: process images k with k %% n == i (default: torchrun RANK/WORLD_SIZE)")
    p.add_argument("--resume", action="store_true", help="continue a killed run; finished samples are kept")
    p.add_argument("--preview", type=int, default=0, metavar="N",
                   help="write side-by-side preview PNGs for the first N new samples")
    p.add_argument("--limit", type=int, help="process at most this many images of this shard")
    add_common_flags(p)
    p.set_defaults(handler=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
