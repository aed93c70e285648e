"""Tiny deterministic stand-ins for the VAD and ASR models, and test signals made of tone bursts.

- :class:`FakeVad`: speech probability from each 512-sample chunk's energy; its "recurrent state" is the offset the
  next request must start at, so a session that breaks the chain is caught.
- :class:`FakeAsr`: a tone-coded recogniser. Every voiced stretch (10 ms frames above an energy threshold, short
  gaps bridged) is a word named after its dominant frequency, ``w440`` for 440 Hz, with its sample times. It counts
  the samples it encodes per request kind (for the partials budget) and can jitter word times (seeded).
- :func:`tone_bursts`: tones separated by silence, with the exact sample spans of each tone.
- :class:`SessionHarness`: a :class:`~streaming.session.Session` pumped with fake models, requests held on demand.
- :class:`ProtocolDriver`: drives a protocol object of ``streaming/protocols/`` as the server does, no socket.
- :class:`EchoAsr`, :class:`CountingVad`: model doubles for ``server/batcher.py`` (batches, threads, gates).

All are functions ``list[Request] -> list[Result]`` (callable objects), usable with ``server.offline``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from server.offline import Run, run_requests_by_kind
from streaming import wire
from streaming.config import SAMPLE_RATE, VAD_CHUNK, SessionConfig
from streaming.session import Session
from streaming.work import AsrKind, AsrRequest, AsrResult, Request, Result, VadRequest, VadResult, Word

FRAME = 160  # 10 ms analysis frames of the fake ASR


class FakeVad:
    """Energy VAD: ``p = rms / (rms + ref_rms)`` per chunk, so ``p = 0.5`` exactly at ``ref_rms``."""

    def __init__(self, ref_rms: float = 0.01) -> None:
        self.ref_rms = ref_rms
        self.requests = 0

    def __call__(self, requests: Sequence[Request]) -> list[Result]:
        results: list[Result] = []
        for r in requests:
            assert isinstance(r, VadRequest)
            if r.state is not None and r.state != r.start:
                raise AssertionError(f"VAD state for offset {r.state} reused at offset {r.start}")
            n = len(r.audio) // VAD_CHUNK
            chunks = np.asarray(r.audio[:n * VAD_CHUNK], dtype=np.float64).reshape(n, VAD_CHUNK)
            rms = np.sqrt((chunks ** 2).mean(axis=1))
            self.requests += 1
            results.append(VadResult(r.session_id, r.seq, (rms / (rms + self.ref_rms)).astype(np.float32),
                                     r.start + n * VAD_CHUNK))
        return results


@dataclass
class FakeAsr:
    """Tone-coded ASR; see the module docstring. ``samples[kind]`` counts encoded samples per :class:`AsrKind`.

    Safe to share between threads only as far as its counters go (they are approximate under concurrency)."""

    threshold_rms: float = 0.02
    min_word: int = 4 * FRAME  # shorter voiced stretches are ignored
    bridge: int = 3 * FRAME  # gaps up to this long inside a stretch are bridged
    jitter: int = 0  # word boundaries move by up to this many samples (seeded)
    seed: int = 0
    record: bool = False  # keep every request in ``requests`` (tests; off for long runs)
    samples: dict[AsrKind, int] = field(default_factory=lambda: {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0})
    calls: dict[AsrKind, int] = field(default_factory=lambda: {AsrKind.FINAL: 0, AsrKind.PARTIAL: 0})
    requests: list[AsrRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, requests: Sequence[Request]) -> list[Result]:
        results: list[Result] = []
        for r in requests:
            assert isinstance(r, AsrRequest)
            self.samples[r.kind] += len(r.audio)
            self.calls[r.kind] += 1
            if self.record:
                self.requests.append(r)
            words = self.transcribe(np.asarray(r.audio, dtype=np.float32))
            results.append(AsrResult(r.session_id, r.seq, " ".join(w.text for w in words), tuple(words)))
        return results

    def transcribe(self, audio: np.ndarray) -> list[Word]:
        """The words of ``audio``, times relative to its first sample."""
        words = []
        for a, b in voiced_stretches(audio, self.threshold_rms, self.bridge):
            if b - a < self.min_word:
                continue
            text = f"w{dominant_frequency(audio[a:b]):.0f}"
            if self.jitter:
                a, b = (int(np.clip(t + self._rng.integers(-self.jitter, self.jitter + 1), 0, len(audio)))
                        for t in (a, b))
            words.append(Word(text, a, max(a + 1, b)))
        return words


def voiced_stretches(audio: np.ndarray, threshold_rms: float, bridge: int) -> list[tuple[int, int]]:
    """``(start, end)`` sample spans of 10 ms frames above ``threshold_rms``, gaps up to ``bridge`` joined."""
    n = len(audio) // FRAME
    if n == 0:
        return []
    rms = np.sqrt((audio[:n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2).mean(axis=1))
    spans: list[tuple[int, int]] = []
    for f in np.flatnonzero(rms > threshold_rms):
        a, b = f * FRAME, (f + 1) * FRAME
        if spans and a - spans[-1][1] <= bridge:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return [(int(a), int(b)) for a, b in spans]


def dominant_frequency(x: np.ndarray) -> float:
    """The strongest frequency of ``x`` to the nearest 10 Hz."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=max(len(x), SAMPLE_RATE)))
    freq = np.argmax(spectrum) * SAMPLE_RATE / max(len(x), SAMPLE_RATE)
    return float(round(freq / 10) * 10)


@dataclass(frozen=True)
class Bursts:
    """A synthesised signal: ``audio`` (float32, 16 kHz), each tone's ``spans`` in samples and its ``words``."""

    audio: np.ndarray
    spans: tuple[tuple[int, int], ...]
    words: tuple[str, ...]


def tone_bursts(tones: Sequence[tuple[float, float]], gaps: Union[float, Sequence[float]] = 1.0,
                lead: float = 0.5, tail: float = 1.0, amplitude: float = 0.3, noise: float = 1e-3,
                seed: int = 0) -> Bursts:
    """Tones ``(frequency Hz, seconds)`` separated by ``gaps`` seconds of near-silence (seeded white noise of rms
    ``noise``), with ``lead`` seconds before the first and ``tail`` after the last. 5 ms fades avoid clicks."""
    gap_list = [gaps] * max(0, len(tones) - 1) if isinstance(gaps, (int, float)) else list(gaps)
    if len(gap_list) != max(0, len(tones) - 1):
        raise ValueError("give one gap between each two tones")
    pieces: list[np.ndarray] = [np.zeros(seconds(lead))]
    spans: list[tuple[int, int]] = []
    pos = len(pieces[0])
    fade = seconds(0.005)
    for i, (freq, dur) in enumerate(tones):
        n = seconds(dur)
        tone = amplitude * np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE)
        ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / fade)
        pieces.append(tone * ramp)
        spans.append((pos, pos + n))
        pos += n
        silence = seconds(gap_list[i]) if i < len(gap_list) else seconds(tail)
        pieces.append(np.zeros(silence))
        pos += silence
    audio = np.concatenate(pieces)
    audio += noise * np.random.default_rng(seed).standard_normal(len(audio))
    return Bursts(audio.astype(np.float32), tuple(spans), tuple(f"w{f:.0f}" for f, _ in tones))


def seconds(s: float) -> int:
    return int(round(s * SAMPLE_RATE))


def pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] → 16-bit little-endian PCM bytes."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def stereo_tones() -> bytes:
    """3 s of interleaved 2-channel 16-bit PCM: 400 Hz on channel 0 at 0.3-1.1 s, 800 Hz on channel 1 at 1.5-2.3 s."""
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    left = np.where((t > 0.3) & (t < 1.1), 0.3 * np.sin(2 * np.pi * 400 * t), 0.0)
    right = np.where((t > 1.5) & (t < 2.3), 0.3 * np.sin(2 * np.pi * 800 * t), 0.0)
    return (np.stack([left, right], axis=1) * 32767).astype("<i2").tobytes()


def fake_run(vad: Optional[FakeVad] = None, asr: Optional[FakeAsr] = None) -> Run:
    """``server.offline`` run function over a fake VAD and ASR."""
    return run_requests_by_kind({VadRequest: vad or FakeVad(), AsrRequest: asr or FakeAsr()})


def _fake_run_with_diarization() -> Run:
    from streaming.work import EmbeddingRequest, SegmentationRequest
    from tests.fakes_diarization import FakeEmbedding, FakeSegmentation  # it imports this module

    return run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: FakeAsr(), SegmentationRequest: FakeSegmentation(),
                                 EmbeddingRequest: FakeEmbedding()})


class ProtocolDriver:
    """A sans-I/O protocol object (``streaming/protocols/``) driven like the server drives it, with fake models
    that answer at once: after each input, the protocol's work runs until it asks for none. ``sent`` collects the
    messages (text as JSON objects, bytes as is), ``close`` the close it decided."""

    def __init__(self, protocol: Any, run: Optional[Run] = None) -> None:
        self.protocol = protocol
        self.run = run or _fake_run_with_diarization()
        self.sent: list[Any] = []
        self.held = False  # True: model work waits in ``waiting`` until ``release()``
        self.waiting: list[Any] = []

    @property
    def close(self) -> Any:
        return self.protocol.close

    def _collect(self) -> None:
        for message in self.protocol.messages_to_send():
            data = message.data
            self.sent.append(json.loads(data) if isinstance(data, str) else data)

    def settle(self) -> None:
        while True:
            self._collect()
            work = self.waiting + self.protocol.work_to_run()
            self.waiting = []
            if self.held or not work:
                self.waiting = work
                self._collect()
                return
            for result in self.run(work):
                self.protocol.receive_result(result)

    def release(self) -> None:
        self.held = False
        self.settle()

    def text(self, message: Any) -> "ProtocolDriver":
        self.protocol.receive_text(message if isinstance(message, str) else json.dumps(message))
        self.settle()
        return self

    def audio(self, data: bytes, chunk: int = 3200) -> "ProtocolDriver":
        for a in range(0, max(len(data), 1), chunk):
            self.protocol.receive_bytes(data[a:a + chunk])
            self.settle()
        return self

    def of(self, kind: str, key: str = "type") -> list[Any]:
        return [m for m in self.sent if isinstance(m, dict) and m.get(key) == kind]

    @property
    def types(self) -> list[str]:
        return [m.get("type", "") for m in self.sent if isinstance(m, dict)]


# A Session driven by fake models

def plain_config(**kwargs: object) -> SessionConfig:
    """A ``SessionConfig`` without diarization (the fake-model tests' default)."""
    return SessionConfig(diarization=False, **kwargs)  # type: ignore[arg-type]


def events_of(events: list, kind: type) -> list:
    """The events of one type, in order."""
    return [e for e in events if isinstance(e, kind)]


class SessionHarness:
    """A session with fake models; requests matching ``hold`` wait in ``held`` until released."""

    def __init__(self, cfg: SessionConfig, extra: Optional[dict] = None, asr: Optional[FakeAsr] = None) -> None:
        self.session = Session("s1", cfg)
        self.asr = asr or FakeAsr(record=True)
        self.run = run_requests_by_kind({VadRequest: FakeVad(), AsrRequest: self.asr, **(extra or {})})
        self.events: list[wire.ServerEvent] = []
        self.held: list[Request] = []
        self.hold: Callable[[Request], bool] = lambda r: False
        self.sent: list[Request] = []

    def pump(self) -> None:
        while True:
            work = self.session.work_to_run()
            self.sent += work
            self.events += self.session.events_to_send()
            work = self.held + work
            self.held = [r for r in work if self.hold(r)]
            now = [r for r in work if not self.hold(r)]
            if not now:
                return
            for result in self.run(now):
                self.session.receive_result(result)

    def feed(self, audio: np.ndarray, chunk: float = 0.1) -> None:
        data, step = pcm16(audio), 2 * seconds(chunk)
        for a in range(0, len(data), step):
            self.session.receive_audio(data[a:a + step])
            self.pump()

    def release(self) -> None:
        self.hold = lambda r: False
        self.pump()

    def end(self) -> None:
        self.session.receive_end()
        self.pump()


# Model doubles for the batcher (tests/server/test_batcher*.py)

def run_bounded(coro: Any, timeout: float = 20.0) -> Any:
    """``asyncio.run(coro)``, failing after ``timeout`` seconds instead of hanging the suite."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


class EchoAsr:
    """Transcribes a request as its session id and seq; records batches; can be held or made to fail."""

    name = "asr"
    max_batch = 64

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: set[str] = set()
        self.threads: set[str] = set()
        self.short = False

    def run_batch(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        self.entered.set()
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        self.batches.append([(r.session_id, r.seq) for r in requests])
        if any(r.session_id in self.poison for r in requests):
            raise RuntimeError("poisoned")
        out = [AsrResult(r.session_id, r.seq, f"{r.session_id}/{r.seq}") for r in requests]
        return out[:-1] if self.short else out

    def warmup(self) -> None: ...
    def modules(self) -> dict[str, Any]: return {}
    def describe(self) -> dict[str, Any]: return {"name": "echo", "checkpoint": None}


def asr_request(session: str, seq: int, kind: AsrKind = AsrKind.PARTIAL) -> AsrRequest:
    """A 10 ms ASR request of ``kind`` (partial by default) for the batcher doubles."""
    return AsrRequest(session, seq, 0, 0, np.zeros(160, np.float32), utterance_id=0, kind=kind)


class CountingVad:
    """Records overlapping calls: two models on one device must never run at the same time."""

    max_batch = 64

    def __init__(self, name: str, shared: dict[str, int]) -> None:
        self.name = name
        self.shared = shared
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def run_batch(self, requests: Sequence[VadRequest]) -> list[VadResult]:
        with self.lock:
            self.shared["now"] += 1
            self.shared["max"] = max(self.shared["max"], self.shared["now"])
        threading.Event().wait(0.002)
        self.threads.add(threading.current_thread().name)
        with self.lock:
            self.shared["now"] -= 1
        return [VadResult(r.session_id, r.seq, np.zeros(1, np.float32), None) for r in requests]

    def warmup(self) -> None: ...
    def modules(self) -> dict[str, Any]: return {}
    def describe(self) -> dict[str, Any]: return {"name": self.name, "checkpoint": None}
