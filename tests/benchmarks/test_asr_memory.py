"""benchmarks/asr_memory.py: the seeded request shapes, option checks, and one child run on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.asr_memory import child, parse_args, shapes

TINY = Path(__file__).parents[1] / "assets" / "tiny_gigaam_ctc.ckpt"


def test_shapes_are_seeded_ragged_batches_of_1_to_12_seconds() -> None:
    got = shapes(50, seed=3)
    assert got == shapes(50, seed=3) and got != shapes(50, seed=4)
    for frames, lengths in got:
        assert 100 <= frames < 1200 and 1 <= len(lengths) <= 4
        assert lengths[0] == frames and all(frames // 2 <= n <= frames for n in lengths)
    assert len({f for f, _ in got}) > 40  # nearly every request its own shape, as in a server


def test_options_are_validated() -> None:
    assert parse_args(["--requests", "40"]).requests == 40
    with pytest.raises(SystemExit):
        parse_args(["--requests", "10"])


@pytest.mark.skipif(not TINY.is_file(), reason="tiny GigaAM checkpoint absent")
def test_a_child_run_reports_rss_every_ten_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECHKA_CACHE", str(tmp_path))
    for variant in ("rechka", "ort-defaults"):
        args = parse_args(["--asr-model", str(TINY), "--requests", "30", "--child", variant])
        out = child(args)
        assert out["variant"] == variant and len(out["rss_mb"]) == 3 and all(v > 0 for v in out["rss_mb"])
        assert out["seconds"] > 0
        assert out["growth_mb_after_20"] == pytest.approx(out["rss_mb"][-1] - out["rss_mb"][1], abs=0.11)
