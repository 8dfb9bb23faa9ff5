#!/usr/bin/env python3
"""One robot's recording all the way to a fine-tuned, exported model, with numbers that say whether
it helped: the workflow of README "Train on your own robot's footage", run on the example data.

    python scripts/robot_workflow.py [--out robot_out] [--base CHECKPOINT] [--steps 200] [--quick]

Every step is the product's own command, run as a subprocess (what a user types):

1. the recording: without ``--bag``, two bags are made from synthesized pairs of the opencv-doc photos
   (exact GT; ``m2s-bag make --simulate-lidar`` adds a LiDAR): ``bags/drive`` to train on and
   ``bags/holdout`` (other photos) to judge by. With ``--bag BAG --holdout-bag BAG`` your own;
2. ``m2s-train synth --bag bags/drive --depth-range MIN MAX``: monocular-to-stereo synthesis from the
   drive's left images, disparities matched to the bag's camera and working range;
3. ``m2s-bag labels``: sparse disparity GT from the drive's LiDAR;
4. ``m2s-train pretrain --init BASE`` on the synthesized pairs, then ``m2s-train finetune`` on the LiDAR
   labels, with S2DKD when ``--depth-model`` gives its monocular teacher (else on the labels alone, said so);
5. ``m2s-eval-bag --mode offline --label-free`` on the held-out bag for the base model, after
   pre-training and after fine-tuning: label-free figures (no GT needed) and, where the bag has it, EPE;
6. ``m2s-export --onnx`` of the fine-tuned model and a live replay of the held-out bag through the node.

``--base``: the model to start from (default: a short pre-training on the other photos, made here).
Writes ``--out``/workflow.json and workflow.md (the before/after table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from quickstart import quickstart_photos  # noqa: E402

from calib.example_data import require_opencv_examples  # noqa: E402


def run(*argv: object, quiet: bool = False) -> str:
    """A command of the product as a subprocess; its stdout, or exit with its error line."""
    cmd = [str(a) for a in argv]
    module = {"m2s-train": "m2s_train.cli", "m2s-bag": "m2s_stereo.bag_cli", "m2s-eval-bag": "m2s_stereo.replay",
              "m2s-export": "m2s_export.cli"}[cmd[0]]
    if not quiet:
        print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    res = subprocess.run([sys.executable, "-m", module, *cmd[1:], "--quiet"], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        sys.exit(f"robot workflow: '{' '.join(cmd)}' failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return res.stdout


def last_checkpoint(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").glob("step_*"))[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="robot_out")
    p.add_argument("--bag", help="your drive (stereo topics + camera_info; a LiDAR topic for step 3)")
    p.add_argument("--holdout-bag", help="your held-out recording (with --bag)")
    p.add_argument("--cloud", default="lidar/points", help="the LiDAR topic of --bag")
    for flag in ("left-image", "right-image", "left-info", "right-info"):
        p.add_argument(f"--{flag}", metavar="TOPIC", help=f"the bags' {flag.replace('-', ' ')} topic (default: found by "
                                                           "type and a left/right or infra1/infra2 part of its name)")
    p.add_argument("--base", help="checkpoint to start from, e.g. one made by 'm2s-train import' from the authors' "
                                  "IGEV-Stereo / RT-IGEV++ weights (default: made here from other photos); the "
                                  "base decides the model")
    p.add_argument("--depth-range", type=float, nargs=2, default=[0.4, 4.0], metavar=("MIN", "MAX"),
                   help="the robot's working range, metres (synthesis matched to it)")
    p.add_argument("--depth-model", help="Depth Anything V2 folder: the S2DKD teacher of the fine-tuning (without it the "
                                         "fine-tuning uses the LiDAR labels alone, --no-s2dkd: a procedural teacher "
                                         "teaches nothing)")
    p.add_argument("--steps", type=int, default=200, help="pre-training and fine-tuning steps each")
    p.add_argument("--quick", action="store_true", help="a CPU smoke run (tiny sizes and steps; the test suite's)")
    args = p.parse_args()
    # the user's paths are the caller's (the commands below run from the repository)
    out = Path(args.out).resolve()
    args.bag = str(Path(args.bag).resolve()) if args.bag else None
    args.holdout_bag = str(Path(args.holdout_bag).resolve()) if args.holdout_bag else None
    args.base = str(Path(args.base).resolve()) if args.base else None
    if args.bag and not args.holdout_bag:
        p.error("--bag needs --holdout-bag (a recording the model is judged on and never trained on)")
    out.mkdir(parents=True, exist_ok=True)
    topic_flags = [x for f in ("left_image", "right_image", "left_info", "right_info") if getattr(args, f)
                   for x in (f"--{f.replace('_', '-')}", getattr(args, f))]
    steps = 6 if args.quick else args.steps
    size = ["--max-side", "160"] if args.quick else ["--max-side", "512"]
    crop = ["--crop", "64", "128"] if args.quick else ["--crop", "128", "256"]
    t0 = time.perf_counter()
    report: dict[str, object] = {"quick": args.quick, "steps": steps}

    photos = quickstart_photos(require_opencv_examples())
    drive, holdout = (Path(args.bag), Path(args.holdout_bag)) if args.bag else (out / "bags" / "drive", out / "bags" / "holdout")
    n = 6 if args.quick else 16  # photos per demo bag
    if not args.bag:  # 1. a demo recording: synthesized pairs with exact GT and a simulated LiDAR
        groups = {"drive": photos[-2 * n : -n], "holdout": photos[-n:]}
        for name, files in groups.items():
            folder = out / "photos" / name
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                target = folder / f.name
                if not target.exists():
                    target.symlink_to(f.resolve())
            if not (out / "bags" / name).exists():
                run("m2s-train", "synth", "--images", folder, "--out", out / "scenes" / name, *size, "--resume")
                run("m2s-bag", "make", "--from", f"synth:{out / 'scenes' / name}", "--out", out / "bags" / name,
                    "--storage", "mcap", "--rate", "5", "--focal", "200", "--baseline", "0.06", "--simulate-lidar")
    base = Path(args.base) if args.base else None
    if base is None:  # a base model from photos neither bag uses
        if not (out / "base" / "train_summary.json").exists():
            base_photos = out / "photos" / "base"
            base_photos.mkdir(parents=True, exist_ok=True)
            for f in photos[: len(photos) - 2 * n]:  # none of the drive's or the hold-out's photos
                if not (base_photos / f.name).exists():
                    (base_photos / f.name).symlink_to(f.resolve())
            run("m2s-train", "synth", "--images", base_photos, "--out", out / "base_synth", *size, "--resume")
            run("m2s-train", "pretrain", "--model", "igev-tiny", "--dataset", f"synth:{out / 'base_synth'}",
                "--steps", steps * 2, "--batch-size", 2, *crop, "--num-workers", 0, "--out", out / "base", "--resume")
        base = last_checkpoint(out / "base")
    report["base"] = str(base)

    # 2. synthesis from the drive, matched to its camera and range
    lo, hi = args.depth_range
    topic = ["--topic", args.left_image] if args.left_image else []  # else the left image synth finds
    synth = json.loads(run("m2s-train", "synth", "--bag", drive, *topic, "--depth-range", lo, hi,
                           "--out", out / "drive_synth", *size, "--resume"))
    report["synthesis"] = {"written": synth["written"], "frames": synth.get("frames")}
    # 3. LiDAR labels: only where the drive has a LiDAR (a stereo-only recording skips 3 and the fine-tuning)
    from calib.rosbag_io import bag_topics, resolve_topic

    topics = bag_topics(drive)
    has_lidar = resolve_topic(topics, args.cloud) is not None
    if has_lidar:
        if not (out / "drive_labels").exists():
            run("m2s-bag", "labels", "--bag", drive, "--cloud", args.cloud, *topic_flags, "--out", out / "drive_labels")
        labels = json.loads((out / "drive_labels" / "labels.json").read_text())
        report["labels"] = {"frames": labels["frames"], "density": labels["density"]}
    else:
        note = (f"{drive} has no LiDAR topic '{args.cloud}' (topics: {', '.join(sorted(topics))}): steps 3 (labels) "
                "and the fine-tuning are skipped; the model is the one pre-trained on the drive's synthesized pairs")
        print(f"robot workflow: {note}", file=sys.stderr)
        report["skipped"] = note
    # 4. pre-train on the synthesized drive, then fine-tune on the LiDAR labels with S2DKD
    run("m2s-train", "pretrain", "--init", base, "--dataset", f"synth:{out / 'drive_synth'}",
        "--steps", steps, "--batch-size", 2, *crop, "--num-workers", 0, "--lr", "1e-4", "--out", out / "pre", "--resume")
    pre = last_checkpoint(out / "pre")
    ft = None
    if has_lidar:
        teacher = ["--depth-model", str(Path(args.depth_model).resolve())] if args.depth_model else ["--no-s2dkd"]
        if not args.depth_model:
            print("robot workflow: no --depth-model: the fine-tuning learns from the LiDAR labels alone (--no-s2dkd); "
                  "S2DKD needs monocular depth (docs/synthesize.md says where the weights come from)", file=sys.stderr)
        run("m2s-train", "finetune", "--init", pre, "--dataset", f"folder:{out / 'drive_labels'}", *teacher,
            "--steps", steps, "--batch-size", 2, *crop, "--num-workers", 0, "--lr", "1e-4",
            "--teacher-cache", out / "teacher_cache", "--out", out / "ft", "--resume")
        ft = last_checkpoint(out / "ft")
    # 5. before / after on the held-out recording
    rows = {}
    tuned = "+ LiDAR fine-tuning (S2DKD)" if args.depth_model else "+ LiDAR fine-tuning (labels only)"
    stages = [("base", base), ("+ synthesis from the drive", pre)] + ([(tuned, ft)] if ft else [])
    for name, model in stages:
        folder = out / "eval" / f"{len(rows)}"
        run("m2s-eval-bag", "--bag", holdout, "--model", model, *topic_flags, "--out", folder, "--mode", "offline", "--label-free",
            "--param", "confidence_threshold=0", "--overwrite")  # a rerun redoes the figures of its models
        acc = json.loads((folder / "report.json").read_text())["accuracy"]
        rows[name] = {**acc.get("label_free", {}), **({"epe": acc["disparity"]["epe"], "bad3": acc["disparity"]["bad3"]}
                                                      if "disparity" in acc else {})}
    report["holdout"] = rows
    # 6. export and a live replay through the node
    onnx = out / "model" / "robot.onnx"
    if not onnx.exists():
        run("m2s-export", "--checkpoint", ft or pre, "--onnx", onnx, "--height", 96 if args.quick else 256,
            "--width", 128 if args.quick else 320, "--no-fp16-check")
    # a smoke run's model is barely trained: its confidence rejects most pixels, and a replay that publishes
    # nothing is an error, not a score
    smoke = ["--param", "confidence_threshold=0"] if args.quick else []
    live = json.loads(run("m2s-eval-bag", "--bag", holdout, "--model", onnx, *topic_flags, *smoke, "--out",
                          out / "replay", "--rate", "0", "--overwrite"))
    report["replay"] = {k: live[k] for k in ("frames", "answered", "dropped")}
    report["seconds"] = round(time.perf_counter() - t0, 1)

    lines = [f"# Robot workflow ({'quick smoke run' if args.quick else f'{steps} steps per stage'})", "",
             f"Held-out recording {holdout}: label-free figures (no GT used) and, where the bag has GT, EPE.", "",
             "| model | photometric | LR consistency % | at range limit % | EPE px | bad-3 % |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        epe = f"{r['epe']:.3f}" if "epe" in r else "n/a"
        bad = f"{100 * r['bad3']:.1f}" if "bad3" in r else "n/a"
        lines.append(f"| {name} | {r.get('photometric', float('nan')):.4f} | {100 * r.get('lr_consistency', float('nan')):.1f} | "
                     f"{100 * r.get('at_range_limit', float('nan')):.2f} | {epe} | {bad} |")
    lines += ["", f"Live replay of the exported model: {live['answered']} of {live['frames']} pairs answered."]
    (out / "workflow.md").write_text("\n".join(lines) + "\n")
    (out / "workflow.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
