"""benchmarks/partial_rows.py: N streams' cached partials in one chunk-graph run against one run each."""

from __future__ import annotations

from pathlib import Path

from tests.server.models.test_asr_onnx import cache  # noqa: F401  (the model cache fixture, one home)


def test_both_ways_step_the_same_streams_and_report_a_ratio(cache: Path, tmp_path: Path) -> None:  # noqa: F811
    from benchmarks.partial_rows import main

    result = main(["--asr-model", "tests/assets/tiny_gigaam_ctc.ckpt", "--asr-quantize", "none", "--rows", "1,3",
                   "--rounds", "2", "--max-utterance", "2", "--out-dir", str(tmp_path)])
    assert [r["rows"] for r in result["results"]] == [1, 3]
    for r in result["results"]:
        assert r["together_ms"] > 0 and r["alone_ms"] > 0
        t, a = r["together_ms"], r["alone_ms"]  # each rounded to 0.1 ms, the ratio from the unrounded times
        assert abs(r["ratio"] - t / a) <= (0.05 / t + 0.05 / a) * t / a + 0.001
        assert r["max_abs_logprob_diff"] <= 1e-4  # fp32: both ways compute the same
    assert Path(result["path"]).is_file() and Path(result["path"]).with_suffix(".png").is_file()
    assert "chunk-v2" in result["chunk_graph"]
