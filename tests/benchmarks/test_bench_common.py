"""The benchmarks' shared helpers: corpus, client log analysis, percentile/slope maths, capacity search, plotting.

Speed is never asserted here; the one socket test only checks what the client sent and recorded.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import (ESPEAK_SENTENCES, SAMPLE_RATE, CapacitySearch, StreamLog, analyze_session,
                               asr_weights, compose, espeak_corpus, linear_fit, percentile, plot_panels, read_wav,
                               sent_time, speech_corpus, stream_session, summarize, write_result)


# ------------------------------------------------------------------------------------------------ maths
def test_percentile_interpolates_linearly_and_handles_empty() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)  # 1 + 0.95 * 3 positions → between 3 and 4
    assert percentile([], 95) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_reports_percentiles_of_the_values() -> None:
    rng = np.random.default_rng(1)
    values = rng.exponential(0.4, size=1000)
    s = summarize(values.tolist())
    assert s["n"] == 1000
    assert s["p50"] == pytest.approx(np.median(values), abs=1e-3)
    assert s["p95"] == pytest.approx(np.quantile(values, 0.95), abs=1e-3)
    assert s["p50"] < s["p95"] < s["p99"] <= s["max"]
    assert summarize([]) == {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}


def test_linear_fit_recovers_slope_on_large_clock_values() -> None:
    x = 1.0e6 + np.linspace(0, 120, 200)  # monotonic clocks are large: the fit must stay well conditioned
    noise = np.random.default_rng(0).normal(0, 0.01, size=x.size)
    slope, intercept = linear_fit(x.tolist(), (0.02 * x + 5 + noise).tolist())
    assert slope == pytest.approx(0.02, abs=1e-3)
    assert intercept + slope * x[0] == pytest.approx(0.02 * x[0] + 5, abs=0.05)
    flat = linear_fit(list(range(50)), [0.3] * 50)
    assert flat is not None and flat[0] == pytest.approx(0.0, abs=1e-12)


def test_linear_fit_needs_two_distinct_x() -> None:
    assert linear_fit([1.0], [2.0]) is None
    assert linear_fit([3.0, 3.0], [1.0, 2.0]) is None
    with pytest.raises(ValueError):
        linear_fit([1.0, 2.0], [1.0])


def _search(capacity: int, start: int, limit: int) -> CapacitySearch:
    search = CapacitySearch(start, limit)
    while (n := search.next()) is not None:
        search.record(n, n <= capacity)
    return search


@pytest.mark.parametrize("start", [1, 3, 16])
@pytest.mark.parametrize("capacity", [0, 1, 2, 5, 8, 13, 63, 64, 300])
def test_capacity_search_finds_the_largest_passing_count(capacity: int, start: int) -> None:
    limit = 512
    search = _search(capacity, start, limit)
    assert search.best == min(capacity, limit)
    counts = [n for n, _ in search.tried]
    assert len(counts) == len(set(counts)), "no stream count is run twice"
    assert len(counts) <= 2 * math.ceil(math.log2(limit)) + 2


def test_capacity_search_stops_at_the_limit() -> None:
    search = _search(capacity=10_000, start=1, limit=40)
    assert search.best == 40
    assert [n for n, _ in search.tried] == [1, 2, 4, 8, 16, 32, 40]


def test_capacity_search_rejects_non_monotone_results_and_bad_bounds() -> None:
    search = CapacitySearch(1, 64)
    search.record(4, False)
    with pytest.raises(ValueError, match="non-monotone"):
        search.record(8, True)
    with pytest.raises(ValueError):
        CapacitySearch(0, 10)


# ------------------------------------------------------------------------------------------------ corpus
def _write_wav(path: Path, data: np.ndarray, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())


def test_read_wav_mixes_down_and_resamples(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    _write_wav(tmp_path / "s.wav", stereo, 8000, 2)
    x = read_wav(tmp_path / "s.wav")
    assert x.dtype == np.int16 and abs(len(x) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    assert np.argmax(spectrum) * SAMPLE_RATE / len(x) == pytest.approx(440, abs=2)


def test_compose_places_clips_after_pauses_within_bounds() -> None:
    clips = [np.full(1000 * (i + 1), i + 1, dtype=np.int16) for i in range(5)]
    corpus = compose(clips, (0.5, 1.0), seed=3, source="test")
    assert len(corpus.clips) == 5
    previous_end = 0
    for clip, (a, b) in zip(clips, corpus.clips):
        assert np.array_equal(corpus.audio[a:b], clip)
        gap = a - previous_end
        assert 0.5 * SAMPLE_RATE <= gap <= 1.0 * SAMPLE_RATE
        assert not corpus.audio[previous_end:a].any(), "pauses are silence"
        previous_end = b
    assert previous_end == len(corpus.audio)
    assert compose(clips, (0.5, 1.0), seed=3, source="test").clips == corpus.clips, "seeded"
    with pytest.raises(ValueError):
        compose([], (0.5, 1.0), seed=0, source="test")


def test_excerpt_wraps_around_the_corpus() -> None:
    corpus = compose([np.arange(1, 101, dtype=np.int16)], (0.0, 0.0), seed=0, source="test")
    x = corpus.excerpt(90, 30)
    assert x.tolist() == list(range(91, 101)) + list(range(1, 21))


def test_speech_corpus_reads_the_shared_layout(tmp_path: Path) -> None:
    (tmp_path / "ru").mkdir()
    (tmp_path / "speakers").mkdir()
    _write_wav(tmp_path / "ru" / "a.wav", np.ones(1600), 16000, 1)
    _write_wav(tmp_path / "speakers" / "b__a.wav", np.ones(3200), 16000, 1)
    _write_wav(tmp_path / "ignored.wav", np.ones(99), 16000, 1)
    corpus = speech_corpus(tmp_path, seed=0)
    assert sorted(b - a for a, b in corpus.clips) == [1600, 3200]
    assert "2 clips" in corpus.source


def test_speech_corpus_falls_back_to_espeak_without_recordings(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.common as common

    marker = compose([np.ones(10, np.int16)], (0.0, 0.0), seed=0, source="stub")
    monkeypatch.setattr(common, "espeak_corpus", lambda seed, pause: marker)
    assert common.speech_corpus(tmp_path, seed=0) is marker


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_corpus_speaks_every_sentence() -> None:
    corpus = espeak_corpus(seed=1, repeats=1)
    assert len(corpus.clips) == len(ESPEAK_SENTENCES)
    for a, b in corpus.clips:
        clip = corpus.audio[a:b].astype(np.float64)
        assert b - a > SAMPLE_RATE and np.sqrt((clip ** 2).mean()) > 100, "a second or more of audible speech"
    assert corpus.source.startswith("espeak-ng")


# ------------------------------------------------------------------------------------------------ client log
def _log() -> StreamLog:
    """3 s of audio in 50 ms chunks: the chunk ending at sample ``b`` leaves at ``100 + b / 16000``."""
    log = StreamLog(audio_samples=48000, speed=1.0, t_start=100.0, t_end=103.6)
    log.marks = [(b, 100.0 + b / SAMPLE_RATE) for b in range(800, 48001, 800)]
    log.events = [
        (101.30, {"type": "partial", "utterance_id": 0, "start": 0.2, "end": 1.0, "text": "a"}),
        (101.80, {"type": "partial", "utterance_id": 0, "start": 0.2, "end": 1.5, "text": "a b"}),
        (102.40, {"type": "final", "utterance_id": 0, "start": 0.2, "end": 2.0, "text": "a b c"}),
        (102.50, {"type": "warning", "code": "partials_dropped", "message": "x"}),
        (102.60, {"type": "warning", "code": "audio_dropped", "message": "x", "dropped_seconds": 0.25}),
        (102.90, {"type": "partial", "utterance_id": 1, "start": 2.51, "end": 2.8, "text": "d"}),
        (103.50, {"type": "final", "utterance_id": 1, "start": 2.51, "end": 3.0, "text": "d e"}),
        (103.60, {"type": "end", "audio_seconds": 3.0, "utterances": 2, "speakers": []}),
    ]
    return log


def test_sent_time_is_the_send_time_of_the_chunk_holding_the_last_sample() -> None:
    log = _log()
    assert sent_time(log, 800) == pytest.approx(100.05)  # samples 0..799: the first chunk
    assert sent_time(log, 801) == pytest.approx(100.10)
    assert sent_time(log, 0) == pytest.approx(100.05)
    assert sent_time(log, 48001) is None
    assert sent_time(StreamLog(audio_samples=0, speed=1.0), 10) is None


def test_analyze_session_measures_latency_cadence_and_warnings() -> None:
    m = analyze_session(_log())
    assert m["final_latency"] == pytest.approx([0.4, 0.5])  # 102.4 - 102.0, 103.5 - 103.0
    assert m["final_end_s"] == [2.0, 3.0]
    # utterance 0 starts at sample 3200 (in the chunk leaving at 100.25); utterance 1 at 40160 (chunk at 102.55)
    assert m["first_partial"] == pytest.approx([1.05, 0.35])
    assert m["partial_interval"] == pytest.approx([0.5])
    assert m["lag"] == pytest.approx([0.3, 0.3, 0.4, 0.1, 0.5])
    assert (m["partials"], m["finals"], m["partials_dropped"]) == (3, 2, 1)
    assert m["audio_dropped_s"] == pytest.approx(0.25)
    assert m["completed"] and m["error"] is None
    assert m["wall_per_audio"] == pytest.approx(3.6 / 3.0)


def test_analyze_session_marks_incomplete_sessions() -> None:
    log = _log()
    log.t_end, log.error = None, "ConnectionClosedError: 1011"
    m = analyze_session(log)
    assert not m["completed"] and m["wall_per_audio"] is None and m["error"].startswith("ConnectionClosed")


def test_asr_weights_reads_the_ready_message() -> None:
    assert asr_weights({"models": {"asr": {"name": "v2_ctc", "random_weights": True}}}) == "random"
    assert asr_weights({"models": {"asr": {"name": "v2_ctc"}}}) == "trained"
    assert asr_weights(None) == "trained"


# ------------------------------------------------------------------------------------------------ client on a socket
async def _fake_server_session(audio: np.ndarray, speed: float) -> tuple[StreamLog, dict]:
    from websockets.asyncio.server import serve

    seen: dict = {"bytes": 0, "start": None, "binary_messages": 0}

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        seen["start"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ready", "session_id": "s", "config": {},
                                  "models": {"asr": {"random_weights": True}}}))
        async for message in ws:
            if isinstance(message, bytes):
                seen["bytes"] += len(message)
                seen["binary_messages"] += 1
            elif json.loads(message)["type"] == "stop":
                end = seen["bytes"] // 2 / SAMPLE_RATE
                await ws.send(json.dumps({"type": "final", "utterance_id": 0, "channel": 0, "speaker": None,
                                          "start": 0.0, "end": end, "text": "x", "words": []}))
                await ws.send(json.dumps({"type": "end", "audio_seconds": end, "utterances": 1, "speakers": []}))
                await ws.close()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        log = await stream_session(f"ws://127.0.0.1:{port}/v1/stream", audio, speed=speed, chunk=1000,
                                   start={"diarization": False}, finish_timeout=10)
    return log, seen


def test_stream_session_sends_everything_paced_and_records_events() -> None:
    audio = (np.arange(8500) % 100).astype(np.int16)
    speed = 8.0
    log, seen = asyncio.run(_fake_server_session(audio, speed))
    assert log.error is None and log.close_code == 1000
    assert seen["start"] == {"type": "start", "diarization": False}
    assert seen["bytes"] == 2 * len(audio) and seen["binary_messages"] == 9
    assert [b for b, _ in log.marks] == [1000 * k for k in range(1, 9)] + [8500]
    for b, at in log.marks:  # never ahead of the pace: chunk [a, b) leaves once b samples are "captured"
        assert at - log.t_start >= b / (SAMPLE_RATE * speed) - 1e-3
    m = analyze_session(log)
    assert m["completed"] and m["finals"] == 1
    assert m["final_latency"][0] >= 0, "the final comes after the chunk holding its end was sent"
    assert asr_weights(log.ready) == "random"


def test_stream_session_records_a_server_error_and_stops_sending() -> None:
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.recv()
        await ws.send(json.dumps({"type": "ready", "session_id": "s", "config": {}, "models": {}}))
        await ws.recv()  # the first audio message
        await ws.send(json.dumps({"type": "error", "code": "internal", "message": "internal error"}))
        await ws.close(1011)

    async def run() -> StreamLog:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            return await stream_session(f"ws://127.0.0.1:{port}/v1/stream", np.zeros(16000, np.int16),
                                        speed=2.0, chunk=800, finish_timeout=10)

    log = asyncio.run(run())
    assert log.error == "internal: internal error" and log.close_code == 1011
    assert 1 <= len(log.marks) < 20, "sending stops once the server has closed"
    assert not analyze_session(log)["completed"]


def test_stream_session_reports_a_refused_connection() -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = asyncio.run(stream_session(f"ws://127.0.0.1:{port}/v1/stream", np.zeros(1600, np.int16), open_timeout=5))
    assert log.error is not None and log.ready is None and not log.marks


# ------------------------------------------------------------------------------------------------ output
def test_plot_panels_and_write_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = plot_panels(tmp_path / "p.png", "t", [
        {"x": [1, 2, 4], "series": {"p95": [0.3, None, 0.9]}, "xlabel": "streams", "ylabel": "s",
         "hline": ("target", 1.0), "logx": True},
        {"x": [0, 1], "series": {"rss": [10, 11]}, "xlabel": "min", "ylabel": "MiB", "marker": ""},
    ])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_result("load", {"streams": [1, 2], "text": "привет"}, tmp_path, stamp="x")
    assert path.name == "load-x.json"
    assert json.loads(path.read_text(encoding="utf-8")) == {"streams": [1, 2], "text": "привет"}
    assert json.loads(capsys.readouterr().out)["text"] == "привет"
