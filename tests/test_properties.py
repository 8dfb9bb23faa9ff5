"""Property-based tests (hypothesis): the CLI flag validators and the metrics on random NaN/inf/empty input."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from calib.console import bounded, non_negative_int, positive_float, positive_int  # noqa: E402
from calib.metrics import MetricAccumulator, disparity_metrics  # noqa: E402
from calib.safe_files import dumps_json  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
weird_text = st.one_of(st.text(max_size=12), st.sampled_from(["nan", "-nan", "inf", "-inf", "1e999", "0x10", " 3",
                                                               "3.0", "-0", "1_000", "", "NaN", "Infinity"]))


@SETTINGS
@given(weird_text)
def test_validators_accept_exactly_the_values_in_range(text):
    for parse, kind, ok in ((positive_int, int, lambda v: v >= 1), (non_negative_int, int, lambda v: v >= 0),
                            (positive_float, float, lambda v: v > 0), (bounded(float, ge=-1, le=1), float,
                                                                      lambda v: -1 <= v <= 1)):
        try:
            expected = kind(text)
        except ValueError:
            expected = None
        if expected is not None and kind is float and not math.isfinite(expected):
            expected = None
        if expected is not None and not ok(expected):
            expected = None
        if expected is None:
            with pytest.raises(argparse.ArgumentTypeError) as info:
                parse(text)
            assert "got" in str(info.value)  # says what it wanted and what it got
        else:
            assert parse(text) == expected and isinstance(parse(text), kind)


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, float(np.float32(1e-30))]))
maps = hnp.arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 6)), elements=floats)


@SETTINGS
@given(maps, st.data())
def test_metrics_on_any_input_are_rates_or_null_never_a_fake_score(gt, data):
    pred = data.draw(hnp.arrays(np.float32, gt.shape, elements=floats))
    m = disparity_metrics(pred, gt)
    with np.errstate(invalid="ignore"):
        valid = int((np.isfinite(gt) & (gt > 0)).sum())
    assert m["pixels"] == valid
    for key in ("d1", "bad1", "bad2", "bad3"):
        if valid:
            assert 0.0 <= m[key] <= 1.0
        else:
            assert math.isnan(m[key])  # nothing measured: not 0 %
    assert (math.isnan(m["epe"]) if not valid else m["epe"] >= 0)
    acc = MetricAccumulator()
    acc.add(pred, gt)
    text = dumps_json(acc.summary())  # always strict JSON
    assert "NaN" not in text and "Infinity" not in text
