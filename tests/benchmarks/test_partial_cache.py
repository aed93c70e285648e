"""benchmarks/partial_cache.py: cached-context partials against the default and context-free policies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_the_benchmark_runs_cached_and_uncached_variants_on_the_same_finals(tmp_path: Path) -> None:
    from benchmarks.partial_cache import main

    result = main(["--held-out", "3", "--compare", "budget_ratio=1.0,cadence=16000", "--cached", "1000",
                   "--cached", "500:2", "--out-dir", str(tmp_path)])
    variants = result["variants"]
    assert list(variants) == ["defaults", "no context, budget_ratio=1.0,cadence=16000",
                              "cached, budget 1.0, cadence 1000 ms, lookahead 0",
                              "cached, budget 1.0, cadence 500 ms, lookahead 2, lag 400 ms"]
    assert {v["utterances"] for v in variants.values()} == {3}
    plain, ahead = variants["cached, budget 1.0, cadence 1000 ms, lookahead 0"], \
        variants["cached, budget 1.0, cadence 500 ms, lookahead 2, lag 400 ms"]
    assert plain["cache_restarts"] == ahead["cache_restarts"] == 0
    assert plain["over_1"] == plain["frames_over_1"] == 0 and plain["max_encoded_frames_over_final_frames"] <= 1.0
    frames = lambda v: v["encoded_frames_over_final_frames"]["p50"]  # noqa: E731
    assert frames(plain) <= plain["partial_over_final"]["p50"] + 0.05  # each sample encoded once (frames round)
    assert frames(ahead) > ahead["partial_over_final"]["p50"] + 0.03  # lookahead frames pass the layers twice
    assert ahead["frames_over_1"] == 0  # ... paid from the budget: the windows end earlier
    assert plain["quality"]["context_free_share"] == 1.0  # the windows are budget 1.0's: only the cache gives context
    assert json.loads(next(tmp_path.glob("partial-cache-*.json")).read_text())["variants"] == variants


def test_wall_times_compare_cached_chunks_windows_and_the_final(tmp_path: Path) -> None:
    from benchmarks.partial_cache import main

    wall = main(["--wall", "1.5", "--repeats", "1", "--out-dir", str(tmp_path)])["wall"]
    assert wall["final"]["over_final"] == 1.0
    assert set(wall) == {"final", "cached chunks, cadence 500 ms", "context-free windows, cadence 500 ms",
                         "cached chunks, cadence 1000 ms", "context-free windows, cadence 1000 ms"}
