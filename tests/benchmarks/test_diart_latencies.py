"""diart at several latencies from one model pass (``benchmarks/diart_runner.py --latencies``): the remembering
block answers a batch asked again from memory, latencies map to diart's, and (with diart's interpreter and the
checkpoints at hand) the output equals separate single-latency runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import der_systems
from benchmarks.diart_runner import Remembered


class _Block:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * 2 + y.sum()


def test_a_batch_asked_again_is_answered_from_memory_and_a_changed_one_is_computed() -> None:
    block = Remembered(_Block())
    x, y = torch.arange(6.0).reshape(2, 3), torch.ones(2, 2)
    first = block(x, y)
    first += 100  # the caller's copy: what is remembered stays as computed
    again = block(x.clone(), y.clone())
    assert torch.equal(again, x * 2 + 4) and (block.computed, block.reused) == (1, 1)
    block(x, y * 2)  # same waveforms, other segmentation: computed
    block(x[:1], y)  # a shorter (last) batch: computed
    assert (block.computed, block.reused, block.block.calls) == (3, 1, 3)
    block.forget()
    block(x, y)
    assert block.computed == 4


def test_requested_latencies_map_to_diarts_at_most_its_chunk_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def runner(wavs, latency_args, *rest):
        asked.append(latency_args)
        return {"by_latency": {"0.5": {"a.wav": [["0", 0.0, 1.0]]}, "5": {"a.wav": [["1", 2.0, 3.0]]}}}

    monkeypatch.setattr(der_systems, "_diart_runner", runner)
    found = der_systems.run_diart_latencies([Path("a.wav")], [0.5, 5.0, 10.0], Path("python"), 0.25, 0.5, 0.3)
    assert asked == [["--latencies", "0.5,5.0"]]  # PyanNet's 5 s chunk: 10 s is diart's 5 s, run once
    assert found == {0.5: {"a.wav": [("0", 0.0, 1.0)]}, 5.0: {"a.wav": [("1", 2.0, 3.0)]},
                     10.0: {"a.wav": [("1", 2.0, 3.0)]}}


@pytest.mark.slow
def test_one_model_pass_equals_separate_runs_on_the_sample(tmp_path: Path) -> None:
    from benchmarks.der import DIART_PYTHON, PYANNOTE_SAMPLE
    from benchmarks.diart_latencies_check import check
    from server.models.cache import EMBEDDING_DEFAULT, SEGMENTATION_DEFAULT

    if not DIART_PYTHON.is_file():
        pytest.skip(f"no diart interpreter at {DIART_PYTHON}")
    try:
        rows = check(f"{SEGMENTATION_DEFAULT}+{EMBEDDING_DEFAULT}", [PYANNOTE_SAMPLE / "sample.wav"], [0.5, 5.0],
                     DIART_PYTHON)
    except (OSError, RuntimeError) as error:  # no checkpoint to be had
        pytest.skip(f"models unavailable: {error}")
    assert [row["equal"] for row in rows] == [True, True]
    assert all(row["turns"]["sample.wav"] > 0 for row in rows)
