"""Protocol v1 over a real socket: the messages, events, errors and close codes as the connection carries them
(each rule on its own, without a socket: ``tests/streaming/protocols/test_v1.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streaming.config import SessionConfig, ms
from tests.fakes import dominant_frequency, stereo_tones
from tests.server.conftest import (Received, exchange, read_all, run, serving, silence, stream, tones_audio)
from tests.server.fake_models import fake_models

START = {"type": "start", "diarization": False}


def test_ready_carries_the_session_id_the_effective_config_and_the_models_with_their_device() -> None:
    async def main() -> Received:
        async with serving() as server:
            return await exchange(server.url, [START, {"type": "stop"}])

    got = run(main())
    ready = got.events[0]
    assert ready["type"] == "ready" and len(ready["session_id"]) >= 16
    assert ready["config"]["encoding"] == "pcm_s16le" and ready["config"]["sample_rate"] == 16000
    assert ready["config"]["diarization"] is False and ready["config"]["interim_results"] is True
    assert set(ready["models"]) == {"vad", "segmentation", "embedding", "asr"}
    assert all(info["device"] == "cpu" and info["name"].startswith("fake-") for info in ready["models"].values())
    assert got.types == ["ready", "end"] and got.close_code == 1000


def test_a_stream_gets_partials_then_finals_in_order_then_end_and_close_1000() -> None:
    freqs = [440, 660, 880]

    async def main() -> Received:
        async with serving() as server:
            return await stream(server.url, tones_audio(freqs), pace=0.01)

    got = run(main())
    assert got.final_words == [f"w{f}" for f in freqs]
    finals = got.of("final")
    assert [f["utterance_id"] for f in finals] == sorted(f["utterance_id"] for f in finals)
    assert all(f["start"] < w["start"] < w["end"] <= f["end"] for f in finals for w in f["words"])
    assert got.of("partial"), "a paced stream with interim results gets partials"
    first_final = got.types.index("final")
    assert got.types.index("partial") < first_final
    end = got.events[-1]
    assert end["type"] == "end" and end["utterances"] == 3
    assert end["audio_seconds"] == pytest.approx(len(tones_audio(freqs)) / 32000, abs=0.01)
    assert got.close_code == 1000


def test_interim_results_false_sends_no_partials() -> None:
    async def main() -> Received:
        async with serving() as server:
            return await stream(server.url, tones_audio([500, 700]), {"diarization": False, "interim_results": False},
                                pace=0.01)

    got = run(main())
    assert got.final_words == ["w500", "w700"] and not got.of("partial")


def test_finalize_closes_the_open_utterance_without_waiting_for_silence() -> None:
    tone = (0.3 * np.sin(2 * np.pi * 600 * np.arange(16000) / 16000) * 32767).astype("<i2").tobytes()

    async def main() -> tuple[dict[str, Any], Received]:
        async with serving() as server:
            async with connect(server.url) as ws:
                await ws.send(json.dumps(START))
                await ws.recv()  # ready
                await ws.send(tone)
                await ws.send(json.dumps({"type": "finalize"}))
                while True:  # the final comes while the stream is still open
                    event = json.loads(await ws.recv())
                    if event["type"] == "final":
                        break
                await ws.send(json.dumps({"type": "stop"}))
                rest = await read_all(ws, Received())
            return event, rest

    final, rest = run(main())
    assert final["text"] == "w600"
    assert rest.types[-1] == "end" and rest.close_code == 1000


def test_multichannel_streams_are_transcribed_per_channel() -> None:
    pcm = stereo_tones()

    async def main() -> Received:
        async with serving() as server:
            return await stream(server.url, pcm, {"channels": 2, "multichannel": True})

    got = run(main())
    by_channel = {f["channel"]: (f["text"], f["speaker"]) for f in got.of("final")}
    assert by_channel == {0: ("w400", "ch0"), 1: ("w800", "ch1")}
    assert got.events[-1]["speakers"] == ["ch0", "ch1"]


def test_audio_at_another_rate_and_encoding_is_resampled() -> None:
    t = np.arange(24000 * 2) / 24000
    audio = np.where((t > 0.3) & (t < 1.2), 0.3 * np.sin(2 * np.pi * 500 * t), 0.0).astype("<f4")

    async def main() -> Received:
        async with serving() as server:
            return await stream(server.url, audio.tobytes(), {"encoding": "pcm_f32le", "sample_rate": 24000,
                                                              "diarization": False}, chunk=999)

    got = run(main())
    assert got.final_words == ["w500"]
    assert got.events[0]["config"]["sample_rate"] == 24000


def test_keepalive_resets_the_idle_timeout() -> None:
    async def main() -> Received:
        async with serving(idle_timeout=0.4) as server:
            async with connect(server.url) as ws:
                received = Received()
                reader = asyncio.create_task(read_all(ws, received))
                await ws.send(json.dumps(START))
                for _ in range(6):  # 1.2 s in all, three idle timeouts' worth
                    await asyncio.sleep(0.2)
                    await ws.send(json.dumps({"type": "keepalive"}))
                await ws.send(json.dumps({"type": "stop"}))
                return await reader

    got = run(main())
    assert got.types == ["ready", "end"] and got.close_code == 1000


def test_an_idle_stream_is_flushed_ended_and_closed_1001() -> None:
    async def main() -> Received:
        async with serving(idle_timeout=0.5) as server:
            # a tone with no trailing silence: its utterance is still open when the client goes quiet
            tone = (0.3 * np.sin(2 * np.pi * 750 * np.arange(12000) / 16000) * 32767).astype("<i2").tobytes()
            return await exchange(server.url, [START, silence(0.3), tone])

    got = run(main())
    assert got.final_words == ["w750"]
    assert got.types[-1] == "end" and got.close_code == 1001 and got.close_reason == "idle timeout"


def test_a_connection_that_never_starts_is_closed_1001_after_the_idle_timeout() -> None:
    async def main() -> Received:
        async with serving(idle_timeout=0.3) as server:
            return await exchange(server.url, [])

    got = run(main())
    assert got.events == [] and got.close_code == 1001


# every bad message and its code: tests/streaming/protocols/test_v1.py; here that the socket carries them
@pytest.mark.parametrize("message, code", [
    ("not json", "invalid_message"),
    ('{"type": "stop"}', "invalid_state"),
])
def test_bad_text_messages_get_an_error_and_close_1008(message: str, code: str) -> None:
    async def main() -> Received:
        async with serving() as server:
            return await exchange(server.url, [message])

    got = run(main())
    assert got.types == ["error"] and got.events[0]["code"] == code and got.events[0]["message"]
    assert got.close_code == 1008


def test_a_second_start_is_invalid_state_1008() -> None:
    async def main() -> Received:
        async with serving() as server:
            return await exchange(server.url, [START, START])

    got = run(main())
    assert got.types == ["ready", "error"] and got.events[1]["code"] == "invalid_state"
    assert got.close_code == 1008


@pytest.mark.parametrize("messages, code", [
    ([b"\x00\x01" * 100], "invalid_audio"),
    ([{"type": "start", "encoding": "mp3"}], "unsupported_format"),
])
def test_bad_audio_gets_an_error_and_close_1003(messages: list[Any], code: str) -> None:
    async def main() -> Received:
        async with serving() as server:
            return await exchange(server.url, messages)

    got = run(main())
    assert got.types[-1] == "error" and got.events[-1]["code"] == code and got.close_code == 1003
    assert "ready" not in got.types or messages[0].get("encoding") == "pcm_f32le"


def test_a_message_over_the_size_limit_closes_1009() -> None:
    async def main() -> tuple[Received, Received]:
        async with serving(max_message_bytes=4096) as server:
            fits = await stream(server.url, tones_audio([440]), chunk=4096)
            async with connect(server.url, max_size=None) as ws:
                await ws.send(json.dumps(START))
                ready = json.loads(await ws.recv())
                await ws.send(b"\x00" * 4097)
                too_big = await read_all(ws, Received(events=[ready]))
            return fits, too_big

    fits, too_big = run(main())
    assert fits.final_words == ["w440"] and fits.close_code == 1000
    assert too_big.types == ["ready"] and too_big.close_code == 1009


def test_finals_that_cannot_be_flushed_in_time_close_1013_overloaded() -> None:
    async def main() -> Received:
        # every model call takes 0.6 s: the finals of a stopped stream cannot finish within 0.5 s
        async with serving(fake_models(delay=0.6), flush_timeout=0.5, shutdown_grace=0.0) as server:
            return await stream(server.url, tones_audio([440, 880]))

    got = run(main())
    assert got.types[0] == "ready" and got.types[-1] == "error"
    assert got.events[-1]["code"] == "overloaded" and "try again later" in got.events[-1]["message"]
    assert got.close_code == 1013


def test_a_model_failure_is_an_internal_error_1011_without_internals() -> None:
    def poisoned(request: Any) -> bool:
        return len(request.audio) > 1600 and dominant_frequency(np.asarray(request.audio)) == 1000

    async def main() -> Received:
        async with serving(fake_models(asr_fail_if=poisoned)) as server:
            return await stream(server.url, tones_audio([1000]))

    got = run(main())
    assert got.types[-1] == "error" and got.events[-1]["code"] == "internal"
    assert got.close_code == 1011
    text = json.dumps(got.events) + got.close_reason
    assert "secret" not in text and "CUDA" not in text and "Traceback" not in text


def test_authentication_by_header_or_query_and_401_otherwise() -> None:
    async def main() -> tuple[list[int], Received, Received]:
        async with serving(tokens=frozenset({"s3cret"})) as server:
            statuses = []
            for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(server.url, **kwargs):
                        pass
                statuses.append(info.value.response.status_code)
            by_header = await exchange(server.url, [START, {"type": "stop"}],
                                       additional_headers={"Authorization": "Bearer s3cret"})
            by_query = await exchange(server.url + "?token=s3cret", [START, {"type": "stop"}])
            return statuses, by_header, by_query

    statuses, by_header, by_query = run(main())
    assert statuses == [401, 401]
    assert by_header.types == by_query.types == ["ready", "end"]


def test_a_full_server_answers_503_with_retry_after_before_the_upgrade() -> None:
    async def main() -> tuple[int, str, Received]:
        async with serving(max_sessions=1) as server:
            async with connect(server.url) as first:
                await first.send(json.dumps(START))
                await first.recv()
                with pytest.raises(InvalidStatus) as info:
                    async with connect(server.url):
                        pass
                await first.send(json.dumps({"type": "stop"}))
                await read_all(first, Received())
            await asyncio.sleep(0.05)  # the slot is freed when the TCP connection is gone
            again = await exchange(server.url, [START, {"type": "stop"}])
            response = info.value.response
            return response.status_code, response.headers.get("Retry-After", ""), again

    status, retry_after, again = run(main())
    assert status == 503 and int(retry_after) > 0
    assert again.types == ["ready", "end"]


def test_a_lagging_stream_is_warned_overloaded_and_a_fast_client_is_slowed_not_dropped() -> None:
    # the bound exceeds the 2 s head start after which a client counts as faster than real time (4 s of audio at 2x)
    session = dataclasses.replace(SessionConfig(), max_pending_audio=ms(6_000))

    async def main() -> Received:
        # each model call takes 1.5 s: audio sent meanwhile waits longer than overload_lag in wall time
        async with serving(fake_models(delay=1.5), overload_lag=0.5, session=session) as server:
            return await stream(server.url, tones_audio([440] * 6, gap=0.5), chunk=16000, pace=0.25)

    got = run(main())
    warnings = {w["code"]: w for w in got.of("warning")}
    assert "overloaded" in warnings
    assert "audio_dropped" not in warnings  # twice real time: held back by backpressure, nothing lost
    assert got.types[-1] == "end" and got.close_code == 1000 and got.of("end")[0]["dropped_seconds"] == 0
    assert got.final_words == ["w440"] * 6


TINY_GIGAAM = Path(__file__).resolve().parents[1] / "assets" / "tiny_gigaam_ctc.ckpt"


@pytest.mark.slow
@pytest.mark.skipif(not TINY_GIGAAM.is_file(), reason="tests/assets/tiny_gigaam_ctc.ckpt not trained yet")
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_real_vad_and_tiny_gigaam_transcribe_espeak_speech_over_a_socket() -> None:
    from scripts.train_tiny_gigaam import character_error_rate, make_jobs, synthesize
    from server.models.asr import GigaAmAsr
    from server.models.vad import VadModel

    jobs = make_jobs(2, seed=7, voices=("ru",), held_out=False)
    clips = [synthesize(*job) for job in jobs]
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([gap[:8000], clips[0], gap, clips[1], gap])
    spans = [(0.5, 0.5 + len(clips[0]) / 16000)]
    spans.append((spans[0][1] + 1.0, spans[0][1] + 1.0 + len(clips[1]) / 16000))
    pcm = (audio * 32767).round().astype("<i2")
    asr = GigaAmAsr(str(TINY_GIGAAM), "cpu", 4)
    models = {**fake_models(), "vad": VadModel("cpu"), "asr": asr}

    async def main() -> Received:
        async with serving(models, max_wait_ms=2.0) as server:
            return await stream(server.url, pcm.tobytes(), pace=0.002)

    got = run(main(), timeout=120)
    finals = got.of("final")
    assert len(finals) == 2 and got.close_code == 1000, got.types
    heard = pcm.astype(np.float32) / 32768
    for final, (a, b) in zip(finals, spans):
        assert final["start"] < b and final["end"] > a, "each final covers its own utterance"
        # the model's own offline decoding of the same cut (the wire rounds times to 1 ms)
        reference = asr.reference_transcribe(heard[round(final["start"] * 16000):round(final["end"] * 16000)])
        assert character_error_rate(reference, final["text"]) <= 0.1, (final["text"], reference)
    asr_info = got.events[0]["models"]["asr"]  # no file-system path to the client: the file's name and hash
    assert asr_info["checkpoint"] == TINY_GIGAAM.name and len(asr_info["checkpoint_sha256"]) == 16
