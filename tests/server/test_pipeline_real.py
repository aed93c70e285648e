"""The streaming core with the real Silero VAD adapter and the tiny GigaAM, on espeak-ng speech with pauses.

Skips while ``tests/assets/tiny_gigaam_ctc.ckpt`` (made by ``scripts/train_tiny_gigaam.py``) or espeak-ng is
missing; ``RECHKA_TINY_ASR`` points at another checkpoint in gigaam's format.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from server.offline import drive_session, run_requests_by_kind
from streaming import wire
from streaming.config import SAMPLE_RATE, SessionConfig
from streaming.session import Session
from streaming.work import AsrRequest, VadRequest
from tests.fakes import pcm16

CHECKPOINT = Path(os.environ.get("RECHKA_TINY_ASR", Path(__file__).parents[1] / "assets" / "tiny_gigaam_ctc.ckpt"))
PHRASES = ("привет как дела", "один два три четыре пять", "сегодня хорошая погода", "мама читать книга",
           "где мой телефон", "завтра утро поезд москва", "спасибо большой друг", "шесть семь восемь девять десять",
           "красный дом там", "я хотеть чай")
PAUSE = 1.5  # seconds of silence between phrases (well above the 0.5 s min_silence)
TOLERANCE = int(0.3 * SAMPLE_RATE)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"tiny GigaAM checkpoint {CHECKPOINT} not built yet"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]


def speak(text: str, tmp_path: Path) -> np.ndarray:
    """espeak-ng Russian at 16 kHz, float32, with its leading and trailing silence trimmed."""
    out = tmp_path / "phrase.wav"
    subprocess.run(["espeak-ng", "-v", "ru", "-s", "150", "-w", str(out), text], check=True, capture_output=True)
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    audio = soxr.resample(pcm, rate, SAMPLE_RATE).astype(np.float32)
    frames = len(audio) // 160
    rms = np.sqrt((audio[:frames * 160].reshape(frames, 160) ** 2).mean(axis=1))
    voiced = np.flatnonzero(rms > 0.01)
    return audio[voiced[0] * 160:(voiced[-1] + 1) * 160]


@pytest.fixture(scope="module")
def models() -> tuple:
    vad_module = pytest.importorskip("server.models.vad")
    asr_module = pytest.importorskip("server.models.asr")
    return vad_module.VadModel("cpu", 8), asr_module.GigaAmAsr(str(CHECKPOINT), device="cpu", max_batch=4)


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[tuple[int, int]]]:
    tmp = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    pieces, spans, pos = [np.zeros(int(0.6 * SAMPLE_RATE), np.float32)], [], int(0.6 * SAMPLE_RATE)
    for phrase in PHRASES:
        audio = speak(phrase, tmp)
        spans.append((pos, pos + len(audio)))
        pieces += [audio, np.zeros(int(PAUSE * SAMPLE_RATE), np.float32)]
        pos += len(audio) + int(PAUSE * SAMPLE_RATE)
    signal = np.concatenate(pieces)
    return (signal + 3e-4 * rng.standard_normal(len(signal))).astype(np.float32), spans


def test_real_vad_and_asr_through_the_session(models: tuple, conversation: tuple) -> None:
    vad, asr = models
    audio, spans = conversation
    session = Session("real", SessionConfig(diarization=False))
    run = run_requests_by_kind({VadRequest: vad.run_batch, AsrRequest: asr.run_batch})
    events = drive_session(session, run, pcm16(audio), chunk_bytes=3200)

    finals = [e for e in events if isinstance(e, wire.Final)]
    assert len(finals) == len(PHRASES)
    for final, (start, end) in zip(finals, spans):
        assert abs(final.start - start) <= TOLERANCE and abs(final.end - end) <= TOLERANCE
        expected = asr.reference_transcribe(audio[final.start:final.end])  # gigaam's own offline decoding
        assert " ".join(final.text.split()) == expected

    for final in finals:
        partials = [e for e in events if isinstance(e, wire.Partial) and e.utterance_id == final.utterance_id]
        assert partials, f"no partial for utterance {final.utterance_id}"
        similarity = [difflib.SequenceMatcher(None, p.text, final.text).ratio() for p in partials]
        assert similarity[-1] >= similarity[0] - 0.1  # later partials are no further from the final
        heard = " ".join(w.word for w in final.words if w.start < partials[-1].end)  # what the last one covered
        assert difflib.SequenceMatcher(None, partials[-1].text, heard).ratio() >= 0.6 or not heard
    assert events[-1] == wire.End(len(audio), len(PHRASES), (), len(audio), 0)
