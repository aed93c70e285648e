"""Many sessions at once through shared batchers: no cross-talk, real batches, failures stay in their session."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np

from server.models.base import current_interrupt
from streaming.work import AsrKind
from tests.fakes import dominant_frequency, pcm16, tone_bursts
from tests.server.conftest import Received, http_get, metric_value, run, serving, stream, tones_audio
from tests.server.fake_models import fake_models

SESSIONS = 20


def session_tones(i: int) -> list[int]:
    """Three tones no other session uses (the fake ASR names a word after its tone)."""
    return [400 + 30 * i, 1200 + 30 * i, 2000 + 30 * i]


def test_twenty_concurrent_sessions_each_get_their_own_transcript_in_shared_batches() -> None:
    models = fake_models(delay=0.005)

    async def one(url: str, i: int) -> Received:
        start = {"diarization": i % 2 == 0}  # half of them also run segmentation and embeddings
        return await stream(url, tones_audio(session_tones(i), seed=i), start, pace=0.01)

    async def main() -> tuple[list[Received], str]:
        # one inference thread for the device (as on a GPU), so every model must share it
        async with serving(models, cpu_inference_threads=1) as server:
            results = await asyncio.gather(*[one(server.url, i) for i in range(SESSIONS)])
            metrics = (await http_get(server.port, "/metrics")).body.decode()
            return results, metrics

    results, metrics = run(main(), timeout=90)
    ids = set()
    for i, got in enumerate(results):
        assert got.final_words == [f"w{f}" for f in session_tones(i)], f"session {i}"
        assert got.types[-1] == "end" and got.close_code == 1000
        ids.add(got.events[0]["session_id"])
    assert len(ids) == SESSIONS
    assert metric_value(metrics, "rechka_sessions_total") == SESSIONS
    for model in ("vad", "asr-partials"):
        count = metric_value(metrics, "rechka_batch_size_count", f'model="{model}"')
        total = metric_value(metrics, "rechka_batch_size_sum", f'model="{model}"')
        assert total > count, f"{model}: no batch held more than one request"
    finals = metric_value(metrics, "rechka_batch_size_count", 'model="asr"')
    assert finals >= 3 * SESSIONS and metric_value(metrics, "rechka_batch_size_sum", 'model="asr"') == finals  # one by one
    assert metric_value(metrics, "rechka_batch_size_count", 'model="segmentation"') > 0
    assert max(models["vad"].batch_sizes) > 1
    shared = models["segmentation"].threads | models["embedding"].threads
    assert len(shared) == 1 and len(models["vad"].threads) == 1 and models["vad"].threads.isdisjoint(shared)
    assert len(models["asr"].threads - shared) == 1  # GigaAM's finals: a thread of their own, partials on the shared


def test_a_failing_model_call_errors_only_the_affected_session() -> None:
    poison = 3100

    def poisoned(request: Any) -> bool:
        return len(request.audio) > 1600 and dominant_frequency(np.asarray(request.audio)) == poison

    models = fake_models(delay=0.01, asr_fail_if=poisoned)
    tones = {i: session_tones(i) for i in range(6)}
    tones[2] = [500, poison, 700]

    async def main() -> list[Received]:
        async with serving(models) as server:
            return await asyncio.gather(*[stream(server.url, tones_audio(t, seed=i), pace=0.005)
                                          for i, t in tones.items()])

    results = run(main())
    bad = results[2]
    assert bad.types[-1] == "error" and bad.events[-1]["code"] == "internal" and bad.close_code == 1011
    assert "secret" not in json.dumps(bad.events)
    for i, got in enumerate(results):
        if i != 2:
            assert got.final_words == [f"w{f}" for f in tones[i]] and got.close_code == 1000, f"session {i}"
    assert models["asr"].failed_batches, "the poisoned request reached the model"


def test_a_withdrawn_speculative_final_is_stopped_and_frees_the_finals_lane() -> None:
    """The first speculative final (a 0.3 s pause, then speech again) blocks in the model until interrupted: the
    session withdraws it when speech resumes, the server cancels it and the batcher interrupts the call, so the
    utterance's real final is not stuck behind it."""
    models = fake_models()
    inner = models["asr"].function
    stopped = threading.Event()
    first = threading.Event()

    def asr(requests: list) -> list:
        interrupt = current_interrupt()
        if interrupt is not None and not first.is_set() and all(r.kind == AsrKind.FINAL for r in requests):
            first.set()
            with interrupt.bound(stopped.set):
                if stopped.wait(20):
                    raise RuntimeError("terminated")
        return inner(requests)

    models["asr"].function = asr
    audio = pcm16(tone_bursts([(440, 1.0), (660, 1.0)], gaps=0.3, lead=0.5, tail=1.0).audio)

    async def main() -> tuple[Received, str]:
        async with serving(models) as server:
            got = await stream(server.url, audio, {"diarization": False, "interim_results": False}, chunk=3200,
                               pace=0.05)  # about twice real time: the VAD keeps up, so the pause is speculated on
            return got, (await http_get(server.port, "/metrics")).body.decode()

    got, metrics = run(main(), timeout=30)
    assert first.is_set() and stopped.is_set()
    assert got.final_words == ["w440", "w660"]
    assert metric_value(metrics, "rechka_model_calls_interrupted_total", 'model="asr"') == 1
    assert metric_value(metrics, "rechka_batch_failures_total", 'model="asr"') == 0
