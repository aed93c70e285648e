"""Clients written for other services, unchanged, against a real server (``python -m server``, tiny GigaAM on CPU):
the official ``deepgram-sdk`` with a custom host, ``livekit-plugins-deepgram``'s streaming STT pointed at
``base_url``, and Vosk clients that behave as Jigasi's ``VoskTranscriptionService`` and Asterisk's
``res_speech_vosk`` do (their message order, frame sizes, 8 kHz slin). espeak-ng speaks words of the tiny model's
lexicon; one real server serves every test here and in ``test_end_to_end.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import wave
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.clients.test_end_to_end import FIRST, SECOND, edit_distance, words

pytestmark = pytest.mark.slow


def pcm_of(wav: Path) -> tuple[bytes, int]:
    with wave.open(str(wav)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def slin8k(wav: Path) -> bytes:
    """The WAV as Asterisk's slin: 8 kHz 16-bit mono, plus 1 s of silence (the caller goes quiet)."""
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-ar", "8000", "-ac", "1", "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout
    return pcm + b"\0" * 16000


def heard(texts: list[str]) -> list[str]:
    return [w for text in texts for w in words(text)]


# --------------------------------------------------------------------------------------------- Deepgram
def test_the_deepgram_sdk_with_a_custom_host_gets_transcripts_speakers_finalize_and_close_stream(
        rechka_server, speech_wav) -> None:
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

    wav, spans = speech_wav([(FIRST, "ru"), (SECOND, "ru")], gap=1.0)
    pcm, rate = pcm_of(wav)
    first_end = 2 * round(rate * spans[0][1])  # Finalize right after the first phrase, before the pause
    host = rechka_server.http.removeprefix("http://")
    environment = DeepgramClientEnvironment(base=f"http://{host}", production=f"ws://{host}",
                                            agent=f"ws://{host}", agent_rest=f"http://{host}")

    async def main() -> tuple[list[Any], int]:
        client = AsyncDeepgramClient(api_key="unused-without-server-tokens", environment=environment)
        messages: list[Any] = []
        async with client.listen.v1.connect(model="nova-3", language="ru", encoding="linear16", sample_rate=rate,
                                            channels=1, interim_results="true", diarize="true", vad_events="true",
                                            punctuate="true", smart_format="true") as socket:
            async def listen() -> None:
                async for message in socket:
                    messages.append(message)

            listener = asyncio.create_task(listen())
            step = 2 * rate // 20  # 50 ms
            cut = first_end - first_end % step
            for i in range(0, cut, step):
                await socket.send_media(pcm[i:i + step])
                await asyncio.sleep(0.01)
            await socket.send_finalize()
            await socket.send_keep_alive()
            for i in range(cut, len(pcm), step):
                await socket.send_media(pcm[i:i + step])
                await asyncio.sleep(0.01)
            await socket.send_close_stream()
            await asyncio.wait_for(listener, 120)
            return messages, socket._websocket.close_code

    messages, close_code = asyncio.run(main())
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    finals = [r for r in results if r.is_final and r.channel.alternatives[0].transcript]
    assert heard([f.channel.alternatives[0].transcript for f in finals]) == words(FIRST) + words(SECOND)
    assert any(r.from_finalize for r in finals), "the Finalize's final is marked"
    assert any(not r.is_final for r in results), "interim results were asked for"
    for final in finals:
        alternative = final.channel.alternatives[0]
        assert final.duration > 0 and final.metadata.request_id and final.channel_index == [0, 1]
        assert alternative.words and all(isinstance(w.speaker, int) and w.confidence == 1.0 and w.punctuated_word
                                         for w in alternative.words)
        assert final.start <= alternative.words[0].start < alternative.words[-1].end <= final.start + final.duration + 1e-3
    assert isinstance(messages[-1], ListenV1Metadata) and messages[-1].duration > 3 and close_code == 1000
    assert [m.type for m in messages].count("SpeechStarted") >= 2


def test_livekit_deepgram_stt_pointed_at_base_url_gets_finals_with_speakers(rechka_server, speech_wav) -> None:
    import aiohttp
    from livekit import rtc
    from livekit.agents import stt as agents_stt
    from livekit.plugins import deepgram

    wav, _ = speech_wav([(FIRST, "ru"), (SECOND, "ru")], gap=1.0)
    pcm, rate = pcm_of(wav)
    pcm += b"\0" * (2 * rate)  # the participant goes quiet after speaking

    async def main() -> list[Any]:
        async with aiohttp.ClientSession() as http:
            engine = deepgram.STT(base_url=rechka_server.http + "/v1/listen", api_key="unused", language="ru",
                                  sample_rate=rate, enable_diarization=True, interim_results=True, http_session=http)
            stream = engine.stream()
            events: list[Any] = []

            async def collect() -> None:
                async for event in stream:
                    events.append(event)

            collector = asyncio.create_task(collect())
            step = 2 * (rate // 100)  # LiveKit's 10 ms frames; the plugin re-chunks them to 50 ms
            for i in range(0, len(pcm) - step + 1, step):
                stream.push_frame(rtc.AudioFrame(pcm[i:i + step], rate, 1, step // 2))
                if i % (20 * step) == 0:
                    await asyncio.sleep(0.01)
            stream.flush()  # the plugin sends Finalize on every flush
            stream.end_input()  # … and CloseStream at the end
            await asyncio.wait_for(collector, 120)
            await stream.aclose()
            return events

    events = asyncio.run(main())
    finals = [e for e in events if e.type == agents_stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert heard([f.alternatives[0].text for f in finals]) == words(FIRST) + words(SECOND)
    assert all(re.fullmatch(r"S\d+", f.alternatives[0].speaker_id or "") for f in finals)
    assert all(f.alternatives[0].end_time > f.alternatives[0].start_time for f in finals)
    kinds = [e.type for e in events]
    assert agents_stt.SpeechEventType.START_OF_SPEECH in kinds and agents_stt.SpeechEventType.END_OF_SPEECH in kinds


# --------------------------------------------------------------------------------------------- Vosk
def test_a_jigasi_style_vosk_client_gets_partials_and_finals_with_speakers(rechka_server, speech_wav) -> None:
    """Jigasi's order: ``{"config" : {"sample_rate" : 16000.0 }}`` (a Java double), 20 ms binary frames sent as they
    come without waiting for replies, the literal eof; it reads ``partial`` vs ``text``."""
    wav, _ = speech_wav([(FIRST, "ru"), (SECOND, "ru")], gap=1.0)
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-ar", "16000", "-ac", "1", "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout

    async def main() -> tuple[list[dict[str, Any]], int, int]:
        replies: list[dict[str, Any]] = []
        async with connect(rechka_server.http.replace("http", "ws", 1) + "/vosk") as ws:
            async def read() -> None:
                try:
                    async for message in ws:
                        replies.append(json.loads(message))
                except ConnectionClosed:
                    pass

            reader = asyncio.create_task(read())
            await ws.send('{"config" : {"sample_rate" : 16000.0 }}')
            frames = 0
            for i in range(0, len(pcm), 640):
                await ws.send(pcm[i:i + 640])
                frames += 1
                await asyncio.sleep(0.02)  # a live participant: real time
            await ws.send('{"eof" : 1}')
            await asyncio.wait_for(reader, 120)
            return replies, frames, ws.close_code

    replies, frames, close_code = asyncio.run(main())
    assert len(replies) == frames + 1 and close_code == 1000  # lockstep: one reply per frame, one for eof
    results = [r for r in replies if r.get("text")]
    assert heard([r["text"] for r in results]) == words(FIRST) + words(SECOND)
    assert all(re.fullmatch(r"S\d+", w["speaker"]) for r in results for w in r["result"])
    assert all(set(w) == {"conf", "end", "start", "word", "speaker"} for r in results for w in r["result"])
    assert any(r.get("partial") for r in replies)


def test_a_res_speech_vosk_style_client_on_8khz_slin_gets_its_result(rechka_server, speech_wav) -> None:
    """res_speech_vosk's order: no config (the server's 8 kHz default), 3200-byte slin frames, after each write at
    most one reply read if one is waiting; a non-empty ``text`` ends the recognition; then eof and close 1000 at once."""
    wav, _ = speech_wav([(FIRST, "ru")], gap=1.0)
    audio = slin8k(wav)

    async def main() -> list[str]:
        texts: list[str] = []
        async with connect(rechka_server.http.replace("http", "ws", 1) + "/vosk") as ws:
            # then silence: the caller stays on the line (up to 60 s of it: 15 s here, more than a loaded machine
            # needs for the final; a real res_speech_vosk waits for Asterisk's own timeout)
            for i in range(0, len(audio) + 16000 * 60, 3200):
                await ws.send(audio[i:i + 3200] if i + 3200 <= len(audio) else b"\0" * 3200)
                await asyncio.sleep(0.05)
                try:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                except TimeoutError:
                    continue
                if reply.get("text"):
                    texts.append(reply["text"])
                    break  # AST_SPEECH_STATE_DONE
            await ws.send('{"eof" : 1}')
            await ws.close(1000)
        return texts

    texts = asyncio.run(main())
    # the tiny model was trained on 16 kHz speech: the telephone band costs it a few letters
    assert texts and edit_distance("".join(words(texts[0])), "".join(words(FIRST))) <= 0.4 * len(FIRST)
