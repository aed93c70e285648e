"""benchmarks/speculative.py: the simulated real-time clock, with the fake VAD and ASR on tone bursts."""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.speculative import MESSAGE, sent_at, simulate
from streaming.config import SAMPLE_RATE, SessionConfig
from tests.fakes import FakeVad, tone_bursts

COSTS = {"vad": (0.002, 0.003), "asr": (0.03, 0.085)}


def run(speculative: bool) -> dict:
    audio = tone_bursts([(300 + 50 * k, 1.2) for k in range(6)], gaps=[0.3, 0.9] * 2 + [0.9], tail=1.5).audio
    config = dataclasses.replace(SessionConfig(diarization=False), speculative_finals=speculative)
    return simulate((audio * 32767).astype(np.int16), config, FakeVad(), COSTS)


def test_a_message_is_sent_when_its_audio_is_complete() -> None:
    assert sent_at(1) == sent_at(MESSAGE) == MESSAGE / SAMPLE_RATE
    assert sent_at(MESSAGE + 1) == 2 * MESSAGE / SAMPLE_RATE


def test_speculation_cuts_final_latency_by_the_vad_wait_and_counts_its_misses() -> None:
    off, on = run(False), run(True)
    assert len(off["latency"]) == len(on["latency"]) == 4
    assert off["samples"]["final"] == on["samples"]["final"] and off["samples"]["missed"] == 0
    # without: the VAD's remaining 0.4 s of pause, then the decode (0.15-0.3 s); with: the decode ran in that wait
    assert all(a - b > 0.1 for a, b in zip(off["latency"], on["latency"]))
    assert max(on["latency"]) < 0.45 < 0.5 < min(off["latency"])
    assert on["decodes"]["missed"] == 2 and on["speculated"] == 4  # the two 0.3 s pauses ended in speech
