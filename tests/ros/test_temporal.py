"""The temporal filter: numba == numpy bit for bit, and its behaviour on a noisy static scene, at edges,
on a scene change and on missing measurements. Pure numpy (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from m2s_stereo.temporal import TemporalConfig, TemporalFilter, temporal_backend


def _frames(rng, n=12, h=24, w=32, sigma=0.3):
    truth = np.full((h, w), 20.0, np.float32)
    truth[:, w // 2:] = 40.0  # a depth edge
    return truth, [truth + rng.normal(0, sigma, truth.shape).astype(np.float32) for _ in range(n)]


class TestBackends:
    @pytest.mark.skipif(temporal_backend() != "numba", reason="numba is not installed: the numpy path alone runs")
    def test_numba_equals_numpy_bit_for_bit(self):
        rng = np.random.default_rng(0)
        for case in range(20):
            cfg = TemporalConfig(alpha=float(rng.uniform(0.05, 1.0)), delta=float(rng.uniform(0.1, 5)),
                                 persistence=int(rng.integers(0, 4)), confirm=int(rng.integers(1, 4)))
            a, b = TemporalFilter(cfg, backend="numba"), TemporalFilter(cfg, backend="numpy")
            for _ in range(6):
                d = rng.uniform(0, 60, (17, 23)).astype(np.float32)
                d[rng.random(d.shape) < 0.2] = np.nan
                d[rng.random(d.shape) < 0.02] = np.inf
                d[rng.random(d.shape) < 0.02] = -1.0
                d[rng.random(d.shape) < 0.02] = 0.0
                conf = rng.uniform(0, 1, d.shape).astype(np.float32)
                conf[rng.random(d.shape) < 0.05] = 0.0
                np.testing.assert_array_equal(a(d, conf if case % 2 else None), b(d, conf if case % 2 else None))
                np.testing.assert_array_equal(a.conf, b.conf)
                np.testing.assert_array_equal(a.age, b.age)
                np.testing.assert_array_equal(a.jumps, b.jumps)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="alpha"):
            TemporalConfig(alpha=0.0)
        with pytest.raises(ValueError, match="delta"):
            TemporalConfig(delta=-1)
        with pytest.raises(ValueError, match="confirm"):
            TemporalConfig(confirm=0)
        f = TemporalFilter()
        with pytest.raises(ValueError, match="differ"):
            f(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32))


@pytest.mark.parametrize("backend", ["numpy", "auto"])
class TestBehaviour:
    def test_noise_on_a_static_scene_is_smoothed_and_edges_stay_sharp(self, backend):
        rng = np.random.default_rng(1)
        truth, frames = _frames(rng, n=40)
        f = TemporalFilter(TemporalConfig(alpha=0.4, delta=1.5), backend=backend)
        out = [f(d) for d in frames]
        raw_flicker = np.mean([np.abs(a - b).mean() for a, b in zip(frames[1:], frames[:-1])])
        flicker = np.mean([np.abs(a - b).mean() for a, b in zip(out[11:], out[10:-1])])
        assert flicker < 0.5 * raw_flicker
        assert np.abs(out[-1] - truth).mean() < np.abs(frames[-1] - truth).mean()
        # the edge: columns next to it keep their side's value (a reset, never a blend of 20 and 40)
        assert np.abs(out[-1][:, 15] - 20).max() < 1.5 and np.abs(out[-1][:, 16] - 40).max() < 1.5

    def test_a_scene_change_shows_in_the_next_frame(self, backend):
        rng = np.random.default_rng(2)
        truth, frames = _frames(rng, n=10)
        f = TemporalFilter(TemporalConfig(alpha=0.4, delta=1.0), backend=backend)
        for d in frames:
            f(d)
        moved = truth + 8.0  # everything 8 px nearer
        out = f(moved + rng.normal(0, 0.3, truth.shape).astype(np.float32))
        assert np.abs(out - moved).mean() < 0.5  # reset at once, no ramp over frames

    def test_missing_measurements_persist_then_vanish(self, backend):
        f = TemporalFilter(TemporalConfig(persistence=2), backend=backend)
        d = np.full((2, 2), 10.0, np.float32)
        f(d)
        gone = np.array([[np.nan, 0.0], [-3.0, np.inf]], np.float32)  # every kind of "no measurement"
        np.testing.assert_array_equal(f(gone), d)  # held, frame 1
        np.testing.assert_array_equal(f(gone), d)  # held, frame 2
        assert np.isnan(f(gone)).all()  # then invalid: never a value older than `persistence` frames

    def test_confident_measurements_move_the_state_faster(self, backend):
        f = TemporalFilter(TemporalConfig(alpha=0.5, delta=5.0), backend=backend)
        base = np.full((1, 2), 10.0, np.float32)
        f(base, np.full((1, 2), 0.5, np.float32))
        out = f(base + 1.0, np.array([[1.0, 0.1]], np.float32))
        assert out[0, 0] > out[0, 1] > 10.0  # the confident new value weighs more
        assert out[0, 0] == pytest.approx(10.0 + 0.5 * 1.0 / (0.5 + 0.25))

    def test_an_unsure_pixel_flipping_between_matches_keeps_its_value(self, backend):
        """Ambiguous pixels (low confidence) flip to another match now and then: the state holds; a
        confident change, or one that lasts `confirm` frames, is followed."""
        f = TemporalFilter(TemporalConfig(alpha=0.4, delta=1.0, confirm=2), backend=backend)
        sure, unsure = np.full((1, 1), 0.9, np.float32), np.full((1, 1), 0.2, np.float32)
        f(np.full((1, 1), 20.0, np.float32), sure)
        for value in (35.0, 20.0, 35.0, 20.0):  # flips, one frame at a time, less confident than the state
            assert f(np.full((1, 1), value, np.float32), unsure)[0, 0] == pytest.approx(20.0, abs=0.5)
        out = [f(np.full((1, 1), 35.0, np.float32), unsure)[0, 0] for _ in range(2)]
        assert out[0] == pytest.approx(20.0, abs=0.5) and out[1] == 35.0  # lasted 2 frames: followed
        assert f(np.full((1, 1), 10.0, np.float32), np.ones((1, 1), np.float32))[0, 0] == 10.0  # confident: at once
