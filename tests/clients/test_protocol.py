"""clients.protocol: client messages survive the server's parser; server events survive dump → parse."""

from __future__ import annotations

import json

import pytest

from streaming import wire

from clients.protocol import ProtocolError, describe_close, dump_client_message, parse_server_event

EVENTS = [
    wire.Ready("abc", {"encoding": "mulaw", "sample_rate": 8000}, {"asr": {"name": "tiny"}}),
    wire.Partial(3, 0, 16000, 40000, "один два", "S1"),
    wire.Partial(4, 1, 16, 32, "три", None),  # the wire carries milliseconds: 16 samples
    wire.Final(3, 0, 16000, 48016, "один два", (wire.WordTiming("один", 16000, 30000, "S1"),
                                                 wire.WordTiming("два", 31008, 48016, "S2")), "S1"),
    wire.Final(5, 1, 0, 1600, "", (), None),
    wire.SpeakerRevision(3, 0, (wire.WordTiming("один", 16000, 30000, "S2"),
                                wire.WordTiming("два", 31008, 48016, "S2")), "S2"),
    wire.SpeakerRevision(5, 1, (), None),
    wire.SpeakerMerge(0, "S7", "S2", 48016),
    wire.SpeakerTurns((wire.Turn("S1", 0, 32000, 0), wire.Turn("S2", 32000, 64000, 1))),
    wire.Warning("audio_dropped", "dropped 1.5 s", 1.5),
    wire.Warning("partials_dropped", "behind", None),
    wire.Error("unsupported_format", "sample_rate 7 is not supported"),
    wire.End(160000, 7, ("S1", "S2")),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_server_events_round_trip_exactly(event: wire.ServerEvent) -> None:
    assert parse_server_event(wire.dump_event(event)) == event


def test_times_between_milliseconds_round_to_the_nearest() -> None:
    parsed = parse_server_event(wire.dump_event(wire.Partial(1, 0, 7, 41, "x")))
    assert isinstance(parsed, wire.Partial) and (parsed.start, parsed.end) == (0, 48)


def test_unknown_extra_fields_are_ignored() -> None:
    obj = wire.event_to_dict(EVENTS[1]) | {"confidence": 0.9}
    assert parse_server_event(json.dumps(obj)) == EVENTS[1]


@pytest.mark.parametrize("text, words", [
    ("not json", "not JSON"), ("[1]", "not an object"), ('{"type": "bogus"}', "unknown server event"),
    ('{"type": "final", "utterance_id": 1, "start": 0, "end": 1}', "no 'text'"),
    ('{"type": "partial", "utterance_id": "1", "start": 0, "end": 1, "text": ""}', "wrong type"),
    ('{"type": "partial", "utterance_id": 1, "start": true, "end": 1, "text": ""}', "wrong type"),
])
def test_malformed_events_raise_protocol_error(text: str, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_server_event(text)


@pytest.mark.parametrize("message", [
    wire.Start(), wire.Start("mulaw", 8000, 2, True, False, 3, False, True, True), wire.Finalize(), wire.Stop(),
    wire.KeepAlive(),
])
def test_client_messages_parse_back_on_the_server(message: wire.ClientMessage) -> None:
    assert wire.parse_client_message(dump_client_message(message)) == message


def test_start_omits_unset_max_speakers() -> None:
    assert "max_speakers" not in json.loads(dump_client_message(wire.Start()))


def test_describe_close_names_the_code_and_reason() -> None:
    assert describe_close(1009, "too big") == ("a message was larger than the server accepts; use a smaller "
                                               "--chunk-ms (close code 1009): too big")
    assert "connection was lost" in describe_close(1006)
    assert "connection was lost" in describe_close(None)
