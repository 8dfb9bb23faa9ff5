"""Stable Diffusion EA inpainting through the real diffusers pipeline, with a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2s_train.errors import SynthesisError
from m2s_train.synth.inpaint import StableDiffusionInpainter, ea_fill, ea_inpaint_mask
from m2s_train.synth.warp import forward_warp

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_sd_inpaint(tmp_path_factory):
    """A randomly initialised SD inpainting pipeline (9-channel UNet, VAE, CLIP text) saved to disk."""
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-sd")
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8, sample_size=32,
    )
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=100, max_position_embeddings=77,
    ))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: 2 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                                    scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
    pipe.save_pretrained(root / "model")
    return str(root / "model")


def test_tiled_fill_changes_only_the_mask(tiny_sd_inpaint):
    rng = np.random.default_rng(0)
    h, w = 100, 150
    img = rng.integers(0, 255, (h, w, 3), np.uint8)
    d = np.full((h, w), 4.0, np.float32)
    d[20:80, 30:60] = 14.0
    d[10:40, 100:130] = 12.0
    warped = forward_warp(img, d)
    ea = ea_inpaint_mask(warped.hole, warped.right_disparity)
    sd = StableDiffusionInpainter(tiny_sd_inpaint, device="cpu", steps=2, tile=64, seed=3)
    boxes = sd._tiles(ea.mask)
    assert len(boxes) >= 2 and all(b[2] == 64 and b[3] == 64 for b in boxes)
    covered = np.zeros_like(ea.mask)
    for y0, x0, th, tw in boxes:
        covered[y0 : y0 + th, x0 : x0 + tw] = True
    assert covered[ea.mask].all()
    out = ea_fill(warped.right, ea, warped.right_disparity, diffusion=sd)
    np.testing.assert_array_equal(out[~ea.mask], warped.right[~ea.mask])
    assert (out[warped.hole] != 0).any()  # holes got content from the model
    again = ea_fill(warped.right, ea, warped.right_disparity,
                    diffusion=StableDiffusionInpainter(tiny_sd_inpaint, device="cpu", steps=2, tile=64, seed=3))
    np.testing.assert_array_equal(out, again)


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(SynthesisError, match="--inpaint telea"):
        StableDiffusionInpainter(str(tmp_path / "none"), device="cpu")


def test_pipeline_with_diffusion(tiny_sd_inpaint, tmp_path):
    import cv2

    from m2s_train.config import load_config
    from m2s_train.synth.pipeline import SynthConfig, list_images, run_synthesis

    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    img = cv2.resize(rng.uniform(0, 255, (4, 6, 3)).astype(np.float32), (96, 64)).astype(np.uint8)
    cv2.circle(img, (40, 30), 14, (250, 30, 30), -1)
    cv2.imwrite(str(tmp_path / "in" / "a.png"), img)
    cfg = load_config(SynthConfig, None, {"inpaint.method": "sd", "inpaint.sd_model": tiny_sd_inpaint,
                                          "inpaint.sd_steps": 2, "inpaint.sd_tile": 64, "depth.device": "cpu",
                                          "disparity.min_max_disparity": 6.0, "disparity.max_max_disparity": 12.0})
    summary = run_synthesis(list_images(str(tmp_path / "in")), tmp_path / "ds", cfg, progress=False)
    assert summary["written"] == 1 and summary["inpainter"].startswith("sd:")
