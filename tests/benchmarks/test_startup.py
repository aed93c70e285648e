"""benchmarks.startup: variants, log phases, the import breakdown, and one real start of the server."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from benchmarks.startup import (TINY_ASR, Variant, cache_without_graphs, import_breakdown, phases, start_once,
                                summarize)

REPO = Path(__file__).resolve().parents[2]


def test_variants_parse_names_environments_and_trees(tmp_path: Path) -> None:
    assert Variant.parse("plain") == Variant("plain")
    assert Variant.parse("x:A=1,B=two=2").env == {"A": "1", "B": "two=2"}
    assert Variant.parse(f"main@{REPO}").tree == REPO
    with pytest.raises(ValueError, match="VAR=VALUE"):
        Variant.parse("x:NOVALUE")
    with pytest.raises(ValueError, match="not a rechka tree"):
        Variant.parse(f"other@{tmp_path}")


def test_a_cache_without_graphs_keeps_the_weights_and_drops_only_onnx(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "segmentation").mkdir(parents=True)
    (cache / "onnx").mkdir()
    (cache / "segmentation" / "model.bin").write_bytes(b"weights")
    (cache / "onnx" / "graph.onnx").write_bytes(b"graph")
    (cache / "segmentation" / "onnx").mkdir()  # only the top-level graph folder is left out
    copy = cache_without_graphs(cache, tmp_path / "scratch")
    assert (copy / "segmentation" / "model.bin").read_bytes() == b"weights"
    assert (copy / "segmentation" / "onnx").is_dir() and not (copy / "onnx").exists()
    assert (cache / "onnx" / "graph.onnx").is_file()  # the original is untouched


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


def test_phases_come_from_the_log_timestamps() -> None:
    t0 = 1_700_000_000.0
    log = "\n".join([
        "rechka-server configuration:",
        f"{stamp(t0 + 2.0)} INFO server.models.device: device: cpu",
        f"{stamp(t0 + 7.5)} INFO server.models.registry: model vad          vad: cpu float32 1 parameters",
        f"{stamp(t0 + 7.9)} INFO server.models.registry: models loaded in 5.40 s (vad 0.20, segmentation 4.00, "
        "embedding 1.00, asr 0.20); warm-up 0.35 s",
        f"{stamp(t0 + 8.0)} INFO rechka.server: listening on ws://127.0.0.1:1/v1/stream (health: /health)",
    ])
    got = phases(log, t0, healthy=8.25)
    assert got["start_to_first_log"] == pytest.approx(2.0, abs=2e-3)
    assert got["loading"] == pytest.approx(5.5, abs=2e-3)
    assert got["serving"] == pytest.approx(0.5, abs=2e-3) and got["health"] == pytest.approx(0.25, abs=2e-3)
    assert (got["load_segmentation"], got["load_embedding"], got["warmup"]) == (4.0, 1.0, 0.35)


def test_import_breakdown_attributes_nested_imports_to_their_outermost_package() -> None:
    # -X importtime order: children first, then their parent; cumulative microseconds in the second column.
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       100 |       2000 |     torch._dynamo",
        "import time:       500 |       3000 |   lightning.fabric",
        "import time:       100 |       4000 | pyannote.audio",
        "import time:      1000 |       5000 | torch",
        "import time:       200 |        200 |   torch._C",
        "import time:       100 |       3000 | numpy",
    ])
    breakdown = import_breakdown(log)
    seconds = {p["package"]: p["seconds"] for p in breakdown["top_packages"]}
    assert seconds == {"pyannote": 0.004, "lightning": 0.003, "torch": 0.007, "numpy": 0.003}
    assert breakdown["total_s"] == pytest.approx(0.012)


def test_summary_takes_medians_of_healthy_starts() -> None:
    runs = [{"seconds_to_health": 3.0, "phases": {"loading": 1.0}}, {"seconds_to_health": 5.0, "phases": {}},
            {"seconds_to_health": None, "exit_code": 2}, {"seconds_to_health": 4.0, "phases": {"loading": 2.0}}]
    summary = summarize(runs)
    assert (summary["starts"], summary["healthy"], summary["median"], summary["min"]) == (4, 3, 4.0, 3.0)
    assert summary["phases_median"] == {"loading": 1.5}


def test_a_real_start_is_timed_and_its_imports_broken_down() -> None:
    from server.models.cache import ModelUnavailable, fetch_segmentation_checkpoint

    try:
        fetch_segmentation_checkpoint()
    except ModelUnavailable as exc:
        pytest.skip(f"default segmentation weights unavailable: {exc}")
    result = start_once(Variant("here"), "module", ["--asr-model", TINY_ASR], poll=0.1, timeout=300, importtime=True)
    assert result["seconds_to_health"] is not None, result.get("log_tail")
    assert {"start_to_first_log", "loading", "load_segmentation", "warmup", "health"} <= set(result["phases"])
    packages = [p["package"] for p in result["imports"]["top_packages"]]
    assert "torch" in packages and "pyannote" not in packages and "lightning" not in packages
