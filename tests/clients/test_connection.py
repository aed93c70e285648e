"""StreamClient against a scripted protocol v1 server: a whole stream, refusals, retries and resuming after drops."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from streaming import wire

from clients.connection import ConnectOptions, GaveUp, Refused, StreamClient
from clients.sources import FileSource

RATE = wire.SAMPLE_RATE


def second_values(path: Path) -> list[list[int]]:
    """Per second of ``path``, the (constant) value of each channel, read independently of the client."""
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
    return [[int(v) for v in data[k * RATE]] for k in range(len(data) // RATE)]


def run_client(url: str, path: Path, multichannel: bool = False, **options: object):  # type: ignore[no-untyped-def]
    opts = ConnectOptions(url=url, backoff=0.05, max_backoff=0.2, **options)  # type: ignore[arg-type]
    client = StreamClient(opts, wire.Start(speaker_turns=True))
    seen: list[str] = []
    client._on_status = lambda s: seen.append(s.state)  # noqa: SLF001 - observe transitions
    captions = asyncio.run(client.run(FileSource(path, multichannel=multichannel)))
    return client, captions, seen


def test_whole_stream_gives_one_final_per_second_and_end(scripted_server, counting_wav) -> None:
    server = scripted_server()
    path = counting_wav(4)
    client, captions, states = run_client(server.url, path)
    expected = [str(v[0]) for v in second_values(path)]
    assert [f.text for f in captions.finals] == expected
    assert [f.start for f in captions.finals] == [k * RATE for k in range(4)]
    assert captions.end is not None and captions.end.audio_samples == 4 * RATE
    assert captions.sessions == 1 and client.status.reconnects == 0
    assert server.starts[0]["encoding"] == "pcm_s16le" and server.starts[0]["sample_rate"] == RATE
    assert server.starts[0]["channels"] == 1 and server.starts[0]["speaker_turns"] is True
    assert server.audio_bytes == {0: 4 * RATE * 2}
    assert states[-1] == "done" and "finishing" in states
    assert not captions.partials  # every partial was closed by its final


def test_multichannel_file_sends_all_channels(scripted_server, counting_wav) -> None:
    server = scripted_server()
    path = counting_wav(2, channels=2, name="stereo.wav")
    _, captions, _ = run_client(server.url, path, multichannel=True)
    assert server.starts[0]["channels"] == 2 and server.starts[0]["multichannel"] is True
    by_channel = {c: [f.text for f in captions.finals if f.channel == c] for c in (0, 1)}
    values = second_values(path)
    assert by_channel == {c: [str(v[c]) for v in values] for c in (0, 1)}
    assert set(captions.speakers) == {"ch0", "ch1"}


@pytest.mark.parametrize("drop_code", [1011, 1001, None])
def test_resumes_from_the_last_final_after_a_drop(scripted_server, counting_wav, drop_code) -> None:
    server = scripted_server(drop_after={0: 2.5}, drop_code=drop_code)
    path = counting_wav(5)
    client, captions, states = run_client(server.url, path)
    expected = [str(v[0]) for v in second_values(path)]
    assert [f.text for f in captions.finals] == expected  # no second lost, none repeated
    assert [f.start for f in captions.finals] == [k * RATE for k in range(5)]  # one time line
    assert captions.sessions == 2 and client.status.reconnects == 1
    assert "reconnecting" in states
    # the second session started at the end of the last final received (2 s), not where sending stopped (2.5 s
    # or later). An abort's RST may discard finals still unread in the client's socket (one or both of them)
    received_before_drop = (RATE, 2 * RATE) if drop_code is not None else (0, RATE, 2 * RATE)
    assert captions.offset in received_before_drop
    assert server.audio_bytes[1] == (5 * RATE - captions.offset) * 2
    assert captions.end is not None and captions.end.audio_samples == 5 * RATE


def test_http_503_is_retried_after_retry_after(scripted_server, counting_wav) -> None:
    server = scripted_server(http_status={0: 503, 1: 503}, retry_after="0")
    client, captions, _ = run_client(server.url, counting_wav(1))
    assert server.connections == 3 and client.status.reconnects == 2
    assert [f.text for f in captions.finals] == ["1000"]


def test_401_is_refused_at_once_with_a_token_hint(scripted_server, counting_wav) -> None:
    server = scripted_server(token="secret")
    with pytest.raises(Refused, match="token"):
        run_client(server.url, counting_wav(1))
    assert server.connections == 1


def test_token_goes_in_the_authorization_header(scripted_server, counting_wav) -> None:
    server = scripted_server(token="secret")
    _, captions, _ = run_client(server.url, counting_wav(1), token="secret")
    assert [f.text for f in captions.finals] == ["1000"]
    assert server.headers[0]["Authorization"] == "Bearer secret"


@pytest.mark.parametrize("code, words", [(1003, "audio format"), (1008, "rejected a message"),
                                         (1009, "smaller --chunk-ms")])
def test_permanent_close_codes_are_not_retried(scripted_server, counting_wav, code, words) -> None:
    server = scripted_server(close_on_start={0: code})
    with pytest.raises(Refused, match=words) as info:
        run_client(server.url, counting_wav(1))
    assert f"close code {code}" in str(info.value)
    assert server.connections == 1


def test_gives_up_after_max_retries_when_nothing_listens(counting_wav) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GaveUp, match="2 attempts"):
        run_client(f"ws://127.0.0.1:{port}/v1/stream", counting_wav(1), max_retries=1)


def test_tls_needs_a_trusted_certificate(scripted_server, counting_wav, tls_certificate) -> None:
    cert, key = tls_certificate
    server = scripted_server(tls=(cert, key))
    assert server.url.startswith("wss://")
    with pytest.raises(Refused, match="--cafile"):
        run_client(server.url, counting_wav(1))
    for options in ({"cafile": str(cert)}, {"insecure": True}):
        _, captions, _ = run_client(server.url, counting_wav(1), **options)
        assert [f.text for f in captions.finals] == ["1000"]


@pytest.mark.parametrize("kwargs, words", [
    ({"url": "http://x/v1/stream"}, "ws://"), ({"url": "ws://x", "insecure": True}, "wss://"),
    ({"url": "ws://x", "max_retries": -1}, "max_retries"), ({"url": "ws://x", "chunk_ms": 5}, "chunk_ms"),
])
def test_options_are_validated(kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        ConnectOptions(**kwargs)  # type: ignore[arg-type]


def test_audio_lost_across_repeated_drops_is_counted_once(scripted_server, counting_wav) -> None:
    # the first session acknowledges 6 s and drops; the replay window (3 s) no longer holds all that followed; the
    # next two sessions drop before any final, so each reconnect finds a gap behind the last final again: the
    # audio lost is what lies between that final and where the last session resumed, counted once
    server = scripted_server(drop_after={0: 6.5, 1: 0.3, 2: 0.3})
    client, captions, _ = run_client(server.url, counting_wav(11), replay_seconds=3)
    assert captions.sessions == 4 and client.status.reconnects == 3
    assert captions.finals[5].end == 6 * RATE and captions.offset > 6 * RATE
    assert client.status.lost_samples == captions.offset - 6 * RATE


def test_max_retries_counts_failures_in_a_row_not_drops_that_made_progress(scripted_server, counting_wav) -> None:
    # four drops, each after the session's first finals: with max_retries=1 a long stream still goes on
    server = scripted_server(drop_after={k: 2.5 for k in range(4)})
    client, captions, _ = run_client(server.url, counting_wav(10), max_retries=1)
    assert client.status.reconnects == 4 and captions.sessions == 5
    assert [f.text for f in captions.finals] == [str(1000 + k) for k in range(10)]


def test_a_file_at_full_speed_through_the_real_server_needs_no_reconnect(counting_wav) -> None:
    import dataclasses

    from streaming.config import SessionConfig, ms
    from tests.server.conftest import serving
    from tests.server.fake_models import fake_models

    path = counting_wav(120)  # constant values: the fake VAD hears two minutes of speech without a pause
    session = dataclasses.replace(SessionConfig(diarization=False), max_pending_audio=ms(3_000))

    async def main() -> tuple[StreamClient, object]:
        async with serving(fake_models(delay=0.01), session=session) as server:
            client = StreamClient(ConnectOptions(url=server.url, max_retries=0), wire.Start(diarization=False))
            captions = await client.run(FileSource(path))
            return client, captions

    client, captions = asyncio.run(main())
    assert client.status.reconnects == 0 and client.status.lost_samples == 0
    assert client.status.server_dropped_samples == 0
    assert captions.end is not None and captions.end.audio_samples == 120 * RATE
    assert captions.end.dropped_samples == 0


class CountingLiveSource:
    """A live source (it never waits for the sender) of ``seconds`` of the counting signal, in 0.1 s chunks at 4×
    real time (a microphone, sped up); ``produced`` counts the frames handed over."""

    live = True

    def __init__(self, seconds: int) -> None:
        from clients.sources import FrameFormat

        self.format = FrameFormat()
        self.signal = np.repeat(np.arange(seconds, dtype="<i2") + 1000, RATE)
        self.produced = 0

    async def chunks(self):  # type: ignore[no-untyped-def]
        for a in range(0, len(self.signal), RATE // 10):
            await asyncio.sleep(0.025)
            yield self.signal[a: a + RATE // 10].tobytes()
            self.produced = a + RATE // 10

    def close(self) -> None:
        pass


class StalledSend:
    """A client websocket whose ``send`` of audio stalls once, after ``after`` bytes, until ``go`` is set (a network
    or a server not taking audio, made deterministic)."""

    def __init__(self, ws, after: int, go: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
        self._ws, self._after, self._go, self._sent = ws, after, go, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._ws, name)

    async def send(self, data) -> None:  # type: ignore[no-untyped-def]
        if isinstance(data, bytes):
            if self._sent >= self._after and not self._go.is_set():
                await self._go.wait()
            self._sent += len(data)
        await self._ws.send(data)


def test_a_live_source_that_outruns_the_replay_window_goes_on_in_a_new_session(scripted_server) -> None:
    """The sender stalls after 3 s while the microphone goes on; once more than the replay window (2 s) is unsent,
    the session ends with stop (its finals all arrive) and a new one resumes at the oldest frame kept: the gap is
    counted in ``lost_samples`` exactly, and every final keeps its place on the one time line."""
    server = scripted_server()
    source = CountingLiveSource(12)
    go = asyncio.Event()

    class Client(StreamClient):
        async def _send(self, ws, fmt, buffer, producer):  # type: ignore[no-untyped-def]
            stalled = StalledSend(ws, 3 * RATE * 2, go) if self.captions.sessions == 1 else ws
            return await super()._send(stalled, fmt, buffer, producer)

    async def main() -> tuple[StreamClient, object]:
        client = Client(ConnectOptions(url=server.url, replay_seconds=2, backoff=0.05), wire.Start())
        run = asyncio.create_task(client.run(source))
        while source.produced < 8 * RATE:  # 5 s beyond the stall: 3 s more than the window
            await asyncio.sleep(0.01)
        go.set()
        return client, await run

    client, captions = asyncio.run(main())
    assert captions.sessions == 2 and client.status.reconnects == 1
    first = server.audio_bytes[0] // 2  # 3 s, and the one send that was waiting at the stall
    assert 3 * RATE <= first < 4 * RATE
    second = len(source.signal) - server.audio_bytes[1] // 2  # where the second session began (absolute)
    assert captions.offset == second > first + 2 * RATE
    assert client.status.lost_samples == second - first  # exactly the audio never sent
    assert [f.text for f in captions.finals if f.end <= first] == ["1000", "1001", "1002"]  # all 3 finals came
    for final in captions.finals:  # one time line: each second's value at its absolute time
        assert int(final.text) == 1000 + final.start // RATE
    assert captions.end is not None and captions.end.audio_samples == len(source.signal)
