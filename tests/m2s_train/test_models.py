"""Model registry and IGEV-Stereo: architecture figures, volume maths, forward/backward, checkpoints."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from m2s_train.errors import ConfigError, ShapeError  # noqa: E402
from m2s_train.models import create_model, list_models, load_model, model_config, save_model  # noqa: E402
from m2s_train.models.igev import (  # noqa: E402
    all_pairs_group_correlation,
    convex_upsample,
    disparity_band,
    linear_lookup,
    pad_for_lookup,
)


def reference_gwc_volume(left, right, max_disp, groups):
    """The reference implementation's loop (slice assignment per disparity), for comparison."""
    b, c, h, w = left.shape
    vol = left.new_zeros(b, groups, max_disp, h, w)
    for i in range(max_disp):
        prod = left[:, :, :, i:] * right[:, :, :, : w - i]
        vol[:, :, i, :, i:] = prod.view(b, groups, c // groups, h, w - i).mean(2)
    return vol


class TestVolumes:
    def test_band_equals_reference_loop(self):
        torch.manual_seed(0)
        left, right = torch.randn(2, 16, 5, 20), torch.randn(2, 16, 5, 20)
        ours = disparity_band(all_pairs_group_correlation(left, right, 4), 12)
        torch.testing.assert_close(ours, reference_gwc_volume(left, right, 12, 4), rtol=1e-5, atol=1e-6)

    def test_linear_lookup_equals_grid_sample(self):
        torch.manual_seed(1)
        vol = torch.randn(2, 3, 4, 5, 17)  # B,H,W,C,L
        pos = torch.rand(2, 3, 4, 9) * 24 - 4  # includes out-of-range positions
        ours = linear_lookup(vol, pos)
        # grid_sample over (N=B*H*W, C, 1, L) with x normalised for align_corners=True
        img = vol.reshape(-1, 5, 1, 17)
        x = 2 * pos.reshape(-1, 1, 9) / (17 - 1) - 1
        grid = torch.stack([x, torch.zeros_like(x)], -1)
        ref = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        torch.testing.assert_close(ours, ref.view(2, 3, 4, 5, 9), rtol=1e-5, atol=1e-6)

    def test_linear_lookup_on_a_prepadded_volume_is_the_same(self):
        torch.manual_seed(2)
        vol = torch.randn(1, 2, 3, 4, 11)
        pos = torch.cat([torch.rand(1, 2, 3, 7) * 16 - 3, torch.tensor([-1.0, 0.0, 10.0, 11.0]).expand(1, 2, 3, 4)], -1)
        torch.testing.assert_close(linear_lookup(pad_for_lookup(vol), pos, padded=True), linear_lookup(vol, pos),
                                   rtol=0, atol=0)
        edge = linear_lookup(vol, torch.tensor([-1.0, 10.0, 10.5, 11.0]).expand(1, 2, 3, 4))
        torch.testing.assert_close(edge[..., 1], vol[..., 10])  # the last sample exactly
        assert (edge[..., [0, 3]] == 0).all()  # one whole pixel outside: zero
        torch.testing.assert_close(edge[..., 2], vol[..., 10] * 0.5)  # half-way to the zero outside

    def test_convex_upsample_of_constant(self):
        up = convex_upsample(torch.full((1, 1, 4, 5), 7.0), torch.randn(1, 9, 16, 20))
        torch.testing.assert_close(up, torch.full((1, 1, 16, 20), 7.0))

    def test_conv_transpose3d_by_depth_phase_equals_conv_transpose3d(self):
        from m2s_train.models.igev_blocks import conv_transpose3d_by_depth_phase

        torch.manual_seed(4)
        conv = torch.nn.ConvTranspose3d(6, 5, 4, 2, 1)
        x = torch.randn(2, 6, 3, 5, 7)
        torch.testing.assert_close(conv_transpose3d_by_depth_phase(x, conv.weight, conv.bias), conv(x),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv_transpose3d_by_depth_phase(x, conv.weight, None),
                                   F.conv_transpose3d(x, conv.weight, None, 2, 1), rtol=1e-5, atol=1e-5)

    def test_convex_upsample_export_form_equals_eager(self, monkeypatch):
        torch.manual_seed(3)
        disp, logits = torch.rand(1, 1, 4, 5) * 30, torch.randn(1, 9, 16, 20) * 5
        eager = convex_upsample(disp, logits)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        torch.testing.assert_close(convex_upsample(disp, logits), eager, rtol=1e-5, atol=1e-5)


class TestArchitecture:
    def test_igev_parameter_count_matches_reference(self):
        # IGEV-Stereo paper / reference code: 12.6 M parameters (MobileNetV2-100 backbone, 3 GRUs)
        n = sum(p.numel() for p in create_model("igev").parameters())
        assert abs(n / 1e6 - 12.6) < 0.1, n
        cfg = model_config("igev")
        assert (cfg.max_disp, cfg.train_iters, cfg.valid_iters, cfg.groups, cfg.corr_radius) == (192, 22, 32, 8, 4)

    def test_output_shapes_and_padding(self):
        model = create_model("igev-tiny").eval()
        with torch.no_grad():
            out = model(torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70))
        assert out.disparity.shape == (1, 1, 50, 70) and len(out.iterations) == 1
        assert out.init_disparity.shape == (1, 1, 50, 70)
        assert out.init_prob.shape == (1, 16, 16, 24)  # padded to 64x96 inside, 1/4 res, 64/4 candidates
        torch.testing.assert_close(out.init_prob.sum(1), torch.ones(1, 16, 24))

    @pytest.mark.parametrize("name", ["igev-tiny", "igev-rt"])
    def test_forward_backward_no_nan(self, name):
        torch.manual_seed(0)
        model = create_model(name, train_iters=2).train()
        size = (32, 64) if name == "igev-tiny" else (64, 96)
        out = model(torch.rand(1, 3, *size), torch.rand(1, 3, *size))
        assert len(out.iterations) == 2
        loss = sum(p.abs().mean() for p in out.iterations) + out.init_disparity.abs().mean() + out.confidence_logit.mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert out.confidence.shape == out.disparity.shape
        assert ((out.confidence >= 0) & (out.confidence <= 1)).all()

    def test_warm_start_from_a_given_disparity(self):
        """``init_disparity`` replaces the GEV estimate as the refinement's start where it is finite: all
        unknown is the cold forward bit for bit; a start far off moves the 1-iteration result with it;
        the GEV estimate itself is untouched (benchmarks/bench_warm_start.py measures the use)."""
        torch.manual_seed(0)
        model = create_model("igev-tiny").eval()
        left, right = torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70)
        with torch.no_grad():
            cold = model(left, right, iters=1)
            unknown = model(left, right, iters=1, init_disparity=torch.full((1, 1, 50, 70), float("nan")))
            far = model(left, right, iters=1, init_disparity=torch.full((1, 1, 50, 70), 5.0))
        assert torch.equal(cold.disparity, unknown.disparity) and torch.equal(cold.confidence, unknown.confidence)
        assert torch.equal(cold.init_disparity, far.init_disparity)
        # a random model's GEV estimate is mid-range (~30 px); warm, it starts at 5 px and one update stays near it
        assert (far.disparity - 5).abs().mean() < 0.2 * (cold.disparity - 5).abs().mean()
        with pytest.raises(ShapeError, match="init_disparity"):
            model(left, right, init_disparity=torch.zeros(1, 1, 40, 70))
        with pytest.raises(ShapeError, match="iters"):
            model(left, right, iters=0)


class TestConfidence:
    def test_every_model_has_one_in_every_mode(self):
        for name in ("igev-tiny", "igev-rt", "igev"):
            assert model_config(name).confidence_head
        model = create_model("igev-tiny").eval()
        with torch.no_grad():
            out = model(torch.rand(1, 3, 50, 70), torch.rand(1, 3, 50, 70))
        assert out.confidence.shape == (1, 1, 50, 70)
        torch.testing.assert_close(out.confidence, torch.sigmoid(out.confidence_logit))

    def test_head_leaves_the_disparity_path_unchanged(self):
        """Same seed with and without the head: the same initial disparity weights, the same outputs, and
        (its inputs detached) the same gradients for every disparity parameter under the full loss."""
        from m2s_train.losses import sequence_loss

        grads = {}
        for head in (True, False):
            torch.manual_seed(0)
            model = create_model("igev-tiny", train_iters=2, confidence_head=head).train()
            g = torch.Generator().manual_seed(1)
            left, right = torch.rand(2, 3, 32, 64, generator=g), torch.rand(2, 3, 32, 64, generator=g)
            gt = torch.rand(2, 1, 32, 64, generator=g) * 30
            loss, stats = sequence_loss(model(left, right), gt, None, 64)
            loss.backward()
            grads[head] = {n: p.grad for n, p in model.named_parameters() if not n.startswith("confidence_head.")}
            assert math.isfinite(stats["confidence_bce"])
        assert grads[True].keys() == grads[False].keys()
        for n in grads[True]:
            torch.testing.assert_close(grads[True][n], grads[False][n], rtol=0, atol=0, msg=n)

    def test_derived_confidence_is_the_gev_mass_near_the_estimate(self):
        from m2s_train.models.igev import ConfidenceCues

        prob = torch.zeros(1, 8, 1, 3)
        prob[0, 2, 0, :] = 1.0  # all mass on candidate 2
        disp = torch.tensor([2.0, 3.0, 5.0]).view(1, 1, 1, 3)
        cues = ConfidenceCues()(prob, disp, disp, torch.zeros_like(disp))
        torch.testing.assert_close(cues[0, 0, 0], torch.tensor([1.0, 1.0, 0.0]))  # mass within +-1 candidate
        torch.testing.assert_close(cues[0, 1, 0], torch.tensor([1.0, 1.0, 0.0]))  # +-2
        torch.testing.assert_close(cues[0, 3, 0], torch.zeros(3))  # entropy of a one-hot
        model = create_model("igev-tiny", confidence_head=False).eval()
        with torch.no_grad():
            out = model(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
        assert ((out.confidence > 0) & (out.confidence < 1)).all() and model.confidence_head is None

    def test_checkpoint_from_before_the_head_loads_with_derived_confidence(self, tmp_path):
        """A checkpoint saved before the confidence head existed: no head weights, no key in its config."""
        from safetensors.torch import load_file, save

        torch.manual_seed(0)
        model = create_model("igev-tiny", confidence_head=False)
        save_model(model, tmp_path / "old")
        meta = json.loads((tmp_path / "old" / "model.json").read_text())
        for key in ("confidence_head", "confidence_width"):
            del meta["config"][key]
        (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
        state = load_file(str(tmp_path / "old" / "model.safetensors"))
        (tmp_path / "old" / "model.safetensors").write_bytes(save(state, metadata={"model": json.dumps(meta)}))
        loaded = load_model(tmp_path / "old")
        assert loaded.config.confidence_head is False
        x = torch.rand(1, 3, 32, 64)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x, x).confidence, model.eval()(x, x).confidence)

    def test_checkpoint_from_before_the_padding_options_keeps_its_padding(self, tmp_path):
        """Saved before pad_mode / upsample_border existed: padded at the end and replicated at the border,
        as it was trained; new models pad centred with a zero border, as the authors' code does."""
        from safetensors.torch import load_file, save

        torch.manual_seed(0)
        model = create_model("igev-tiny", pad_mode="end", upsample_border="replicate")
        save_model(model, tmp_path / "old")
        meta = json.loads((tmp_path / "old" / "model.json").read_text())
        for key in ("pad_mode", "upsample_border", "context_source", "cost_attention", "corr_lookup",
                    "motion_branch_dim"):
            del meta["config"][key]
        (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
        state = load_file(str(tmp_path / "old" / "model.safetensors"))
        (tmp_path / "old" / "model.safetensors").write_bytes(save(state, metadata={"model": json.dumps(meta)}))
        loaded = load_model(tmp_path / "old").eval()
        assert (loaded.config.pad_mode, loaded.config.upsample_border) == ("end", "replicate")
        x, y = torch.rand(1, 3, 40, 70), torch.rand(1, 3, 40, 70)  # padded to 64 x 96
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, y).disparity, model.eval()(x, y).disparity)
            new = create_model("igev-tiny")
            new.load_state_dict(model.state_dict())
            assert not torch.allclose(new.eval()(x, y).disparity, loaded(x, y).disparity)

    def test_centred_padding_is_the_authors_input_padder(self):
        model = create_model("igev-tiny")
        assert model._pads(375, 1242) == (3, 3, 4, 5)  # KITTI: 384 x 1248, as InputPadder(divis_by=32)
        assert model._pads(64, 96) == (0, 0, 0, 0)
        assert create_model("igev-tiny", pad_mode="end")._pads(375, 1242) == (0, 6, 0, 9)
        with pytest.raises(ConfigError, match="pad_mode must be one of"):
            create_model("igev-tiny", pad_mode="middle")

    def test_zero_border_reads_zeros_beyond_the_edge(self):
        up = convex_upsample(torch.full((1, 1, 4, 5), 7.0), torch.zeros(1, 9, 16, 20), border="zeros")
        assert up[0, 0, 5:11, 5:15].allclose(torch.tensor(7.0))  # inside: all nine neighbours are 7
        torch.testing.assert_close(up[0, 0, 0, 0], torch.tensor(7.0 * 4 / 9))  # corner: 4 of 9 inside

    def test_bad_inputs(self):
        model = create_model("igev-tiny")
        with pytest.raises(ShapeError):
            model(torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 60))
        with pytest.raises(ShapeError):
            model(torch.rand(1, 1, 32, 64), torch.rand(1, 1, 32, 64))


class TestRegistry:
    def test_unknown_name_lists_valid(self):
        with pytest.raises(ConfigError, match="igev-rt"):
            create_model("raft")
        assert {"igev", "igev-rt", "igev-tiny", "rt-igev"} <= set(list_models())

    def test_overrides_and_validation(self):
        assert model_config("igev-tiny", max_disp=None).max_disp == 64
        with pytest.raises(ConfigError, match="no option"):
            model_config("igev", depth=3)
        with pytest.raises(ConfigError, match="multiple of 16"):
            model_config("igev", max_disp=100)

    def test_safetensors_round_trip_and_mismatch(self, tmp_path):
        torch.manual_seed(0)
        model = create_model("igev-tiny").eval()
        save_model(model, tmp_path / "ck")
        loaded = load_model(tmp_path / "ck").eval()
        x = torch.rand(1, 3, 32, 64)
        with torch.no_grad():
            torch.testing.assert_close(model(x, x).disparity, loaded(x, x).disparity)
        meta = json.loads((tmp_path / "ck" / "model.json").read_text())
        meta["config"]["hidden_dim"] = 24
        (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match="does not match the config saved inside.*hidden_dim 24 vs 16"):
            load_model(tmp_path / "ck")
        # a file saved without its config (older versions): model.json alone, checked against the tensors
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(tmp_path / "ck" / "model.safetensors")), str(tmp_path / "ck" / "model.safetensors"))
        with pytest.raises(ConfigError, match="another model config"):
            load_model(tmp_path / "ck")
        with pytest.raises(ConfigError, match="not a model checkpoint"):
            load_model(tmp_path)

    def test_edited_config_that_fits_the_weights_is_refused(self, tmp_path):
        """max_disp changes no tensor shape: without the stored config it would load and give wrong disparities."""
        save_model(create_model("igev-tiny"), tmp_path / "ck")
        meta = json.loads((tmp_path / "ck" / "model.json").read_text())
        meta["config"]["max_disp"] = 256
        (tmp_path / "ck" / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match="max_disp 256 vs 64"):
            load_model(tmp_path / "ck")
        (tmp_path / "ck" / "model.json").write_text('{"name": "igev-tiny", "config": {')  # cut by a crash
        with pytest.raises(ConfigError, match="model.json is corrupt"):
            load_model(tmp_path / "ck")


class TestNanSafety:
    def test_lookup_of_nan_and_inf_positions_is_nan_not_an_index_error(self):
        from m2s_train.models.igev import linear_lookup

        volume = torch.rand(1, 2, 3, 4, 10)
        pos = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 2.5, -0.5, 9.25])
        positions = pos.expand(1, 2, 3, 8).contiguous()
        out = linear_lookup(volume, positions)  # before: IndexError (NaN -> INT64_MIN gather index)
        assert torch.isnan(out[..., :3]).all()
        assert (out[..., 3:5] == 0).all()  # far outside: the zero pads
        ref = torch.nn.functional.grid_sample(
            volume.reshape(6, 4, 1, 10), torch.stack([pos[5:] / 4.5 - 1, torch.zeros(3)], -1).view(1, 1, 3, 2).expand(6, 1, 3, 2),
            align_corners=True).view(1, 2, 3, 4, 3)
        torch.testing.assert_close(out[..., 5:], ref)

    def test_nan_input_gives_nan_pixels_not_a_crash(self):
        model = create_model("igev-tiny").eval()
        left = torch.rand(1, 3, 64, 96)
        left[0, :, 20:30, 20:30] = float("nan")
        with torch.no_grad():
            out = model(left, torch.rand(1, 3, 64, 96)).disparity
        assert out.shape == (1, 1, 64, 96) and torch.isnan(out).any()
