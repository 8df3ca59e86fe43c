"""The encoder benchmark measures every variant and reports deviation honestly."""

import math

from samsparse.benchmark import bench_encoder, markdown_table


def test_bench_encoder_rows_and_ratios():
    rows = bench_encoder(
        "tiny", (1,), "fp32", "cpu", ("original", "sdpa", "sparse:local:radius=0,tile=2x2", "bogus"),
        img_size=128, warmup=0, repeat=2,
    )
    by = {r.variant: r for r in rows}
    assert by["original"].speedup == 1.0 and by["original"].max_dev == 0.0
    assert by["sdpa"].max_dev <= 1e-5 and by["sdpa"].backend == "sdpa"
    assert by["sparse:local:radius=0,tile=2x2"].max_dev > 1e-3  # sparse deviates, and says so
    assert math.isfinite(by["sdpa"].speedup) and by["sdpa"].images_per_s > 0
    assert "unknown variant" in by["bogus"].error
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "failed" in table


def test_interleaved_ratios_rounds_and_baseline():
    import pytest

    from samsparse.benchmark import interleaved_ratios

    res = interleaved_ratios("tiny", ["dense", "original"], batch=1, dtype="fp32", device="cpu", rounds=3, repeat=1,
                             img_size=64)
    dense, orig = res["variants"]["dense"], res["variants"]["original"]
    assert len(dense["ms"]) == len(orig["ms"]) == 3
    assert dense["ratios"] == [1.0, 1.0, 1.0]  # the first variant is the baseline of every round
    for i in range(3):
        assert math.isclose(orig["ratios"][i], dense["ms"][i] / orig["ms"][i])
    assert len(dense["stream_ms"]) == 3 and dense["stream_ratios"] == [1.0, 1.0, 1.0]
    for i in range(3):
        assert math.isclose(orig["stream_ratios"][i], dense["stream_ms"][i] / orig["stream_ms"][i])
    assert orig["stream_ratio_median"] > 0 and dense["stream_ms_median"] > 0
    assert orig["rel_dev"] < 1e-5 and dense["rel_dev"] < 1e-4  # fp32: the patched dense encoder is exact
    with pytest.raises(ValueError, match="rounds"):
        interleaved_ratios("tiny", ["dense"], rounds=0, device="cpu", img_size=64)
