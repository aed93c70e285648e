"""Deepgram's ``/v1/listen`` and Vosk's ``/vosk`` on the server's one port, over real sockets with fake models: the
handshake (auth, query errors in Deepgram's shape), the closes the connection carries, and each message's path.
The protocols' rules one by one: ``tests/streaming/protocols/``; the official SDKs on a real server:
``tests/clients/test_integrations.py``."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.server.conftest import Received, exchange, http_get, metric_value, read_all, run, serving, tones_audio

LISTEN = "/v1/listen?encoding=linear16&sample_rate=16000&model=nova-3&no_delay=true"


def base(url: str) -> str:
    return url.rsplit("/v1/stream", 1)[0]


def test_deepgram_stream_over_the_socket_with_token_or_bearer_auth_and_401_otherwise() -> None:
    audio = tones_audio([440, 880])

    async def main() -> tuple[list[int], Received, Received, str]:
        async with serving(tokens=frozenset({"k3y"})) as server:
            url = base(server.url) + LISTEN
            statuses = []
            for headers in ({}, {"Authorization": "Token wrong"}):
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url, additional_headers=headers):
                        pass
                statuses.append(info.value.response.status_code)
            body = json.loads(info.value.response.body)
            by_token = await exchange(url, [audio, '{"type": "CloseStream"}'],
                                      additional_headers={"Authorization": "Token k3y"})
            by_bearer = await exchange(url, [audio, b""], additional_headers={"Authorization": "bearer k3y"})
            metrics = (await http_get(server.port, "/metrics")).body.decode()
            return statuses, by_token, by_bearer, body["err_msg"] + metrics

    statuses, by_token, by_bearer, rest = run(main())
    assert statuses == [401, 401] and "Invalid credentials" in rest
    for got in (by_token, by_bearer):
        finals = [e for e in got.events if e["type"] == "Results" and e["is_final"]]
        assert [f["channel"]["alternatives"][0]["transcript"] for f in finals] == ["w440", "w880"]
        assert got.events[-1]["type"] == "Metadata" and got.close_code == 1000
    assert metric_value(rest, "rechka_connections_rejected_total", 'reason="unauthorized"') == 2


@pytest.mark.parametrize("query, words", [
    ("encoding=opus", "linear16, mulaw or alaw"),
    ("encoding=linear16&language=en-US", "language=ru"),
    ("sample_rate=16000", "encoding"),
])
def test_a_query_rechka_cannot_honour_is_400_in_deepgrams_shape_before_the_upgrade(query: str, words: str) -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with serving() as server:
            return await http_get(server.port, "/v1/listen?" + query,
                                  {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})

    reply = run(main())
    assert reply.status == 400 and words in reply.headers["dg-error"]
    body = reply.json()
    assert body["err_code"] == "Bad Request" and words in body["err_msg"] and body["request_id"]


def test_deepgram_closes_1011_net_0001_when_the_client_goes_quiet() -> None:
    async def main() -> Received:
        async with serving(idle_timeout=0.4) as server:
            return await exchange(base(server.url) + LISTEN, [tones_audio([440])])

    got = run(main())
    assert got.close_code == 1011 and got.close_reason.startswith("NET-0001")
    assert [e["channel"]["alternatives"][0]["transcript"] for e in got.events if e["type"] == "Results"] == ["w440"]


def test_vosk_over_the_socket_one_reply_per_frame_then_eof_and_close_1000() -> None:
    audio = tones_audio([500])

    async def main() -> tuple[Received, int]:
        async with serving() as server:
            async with connect(base(server.url) + "/vosk") as ws:
                received = Received()
                await ws.send('{"config" : {"sample_rate" : 16000.0 }}')
                frames = 0
                for i in range(0, len(audio), 3200):
                    await ws.send(audio[i:i + 3200])
                    received.events.append(json.loads(await ws.recv()))  # lockstep: one reply per frame
                    frames += 1
                await ws.send('{"eof" : 1}')
                return await read_all(ws, received), frames

    got, frames = run(main())
    assert len(got.events) == frames + 1 and got.close_code == 1000
    assert [e["text"] for e in got.events if e.get("text")] == ["w500"]


def test_a_bad_vosk_message_closes_1008_with_the_reason() -> None:
    async def main() -> Received:
        async with serving() as server:
            return await exchange(base(server.url) + "/vosk", ["hello"])

    got = run(main())
    assert got.events == [] and got.close_code == 1008 and "eof" in got.close_reason
