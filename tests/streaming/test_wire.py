"""streaming/wire.py: parsing client messages and dumping server events (seconds only here)."""

from __future__ import annotations

import json

import pytest

from streaming import wire
from streaming.errors import InvalidMessage


def test_start_with_every_field() -> None:
    text = json.dumps({"type": "start", "encoding": "mulaw", "sample_rate": 8000, "channels": 2,
                       "multichannel": True, "diarization": False, "max_speakers": 3, "interim_results": False,
                       "speaker_turns": True, "min_speakers": 2, "num_speakers": None})
    assert wire.parse_client_message(text) == wire.Start("mulaw", 8000, 2, True, False, 3, False, True,
                                                         min_speakers=2, num_speakers=None)


def test_start_defaults_and_bytes_input() -> None:
    assert wire.parse_client_message(b'{"type": "start"}') == wire.Start()
    assert wire.parse_client_message('{"type": "start", "max_speakers": null}').max_speakers is None
    hints = wire.parse_client_message('{"type": "start", "min_speakers": 2, "num_speakers": null}')
    assert (hints.min_speakers, hints.num_speakers) == (2, None)


@pytest.mark.parametrize("kind, cls", [("finalize", wire.Finalize), ("stop", wire.Stop), ("keepalive", wire.KeepAlive)])
def test_simple_messages(kind: str, cls: type) -> None:
    assert isinstance(wire.parse_client_message(json.dumps({"type": kind})), cls)


@pytest.mark.parametrize("text, fragment", [
    ("not json", "JSON objects"),
    ("[1, 2]", "JSON objects"),
    (b"\xff\xfe", "JSON objects"),
    ('{"encoding": "mulaw"}', '"type"'),
    ('{"type": "dance"}', "unknown message type"),
    ('{"type": "start", "rate": 8000}', "unknown field 'rate'"),
    ('{"type": "start", "sample_rate": "8000"}', "'sample_rate' must be int"),
    ('{"type": "start", "sample_rate": true}', "'sample_rate' must be int"),
    ('{"type": "start", "diarization": 1}', "'diarization' must be bool"),
    ('{"type": "start", "max_speakers": 2.5}', "'max_speakers' must be int or null"),
    ('{"type": "start", "num_speakers": "2"}', "'num_speakers' must be int or null"),
])
def test_bad_messages_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage, match=fragment.replace("[", r"\[")):
        wire.parse_client_message(text)


def test_events_are_dumped_in_seconds() -> None:
    words = (wire.WordTiming("привет", 16_000, 24_000, "S1"),)
    final = json.loads(wire.dump_event(wire.Final(3, 1, 16_000, 32_123, "привет", words, "S1")))
    assert final == {"type": "final", "utterance_id": 3, "channel": 1, "speaker": "S1", "start": 1.0,
                     "end": 2.008, "text": "привет",
                     "words": [{"word": "привет", "start": 1.0, "end": 1.5, "speaker": "S1"}]}
    assert "привет" in wire.dump_event(wire.Final(0, 0, 0, 1, "привет"))  # not \\u-escaped
    partial = json.loads(wire.dump_event(wire.Partial(0, 0, 800, 8_000, "при")))
    assert partial == {"type": "partial", "utterance_id": 0, "channel": 0, "speaker": None, "start": 0.05,
                       "end": 0.5, "text": "при"}


def test_other_events() -> None:
    d = wire.event_to_dict
    assert d(wire.SpeakerTurns((wire.Turn("S2", 0, 8_000, 1),))) == {
        "type": "speaker_turns", "turns": [{"speaker": "S2", "channel": 1, "start": 0.0, "end": 0.5}]}
    assert d(wire.Warning("audio_dropped", "m", dropped_seconds=1.23456)) == {
        "type": "warning", "code": "audio_dropped", "message": "m", "dropped_seconds": 1.235}
    assert "dropped_seconds" not in d(wire.Warning("partials_dropped", "m"))
    assert d(wire.SpeakerMerge(0, "S7", "S2", 24_000)) == {"type": "speaker_merge", "channel": 0, "from": "S7",
                                                          "into": "S2", "at": 1.5}
    assert [wire.SpeakerMerge(0, "S7", "S2", 0).relabel(x) for x in ("S7", "S2", "S1", None)] == ["S2", "S2", "S1", None]
    assert d(wire.Error("invalid_audio", "m")) == {"type": "error", "code": "invalid_audio", "message": "m"}
    assert d(wire.End(48_000, 2, ("S1",))) == {"type": "end", "audio_seconds": 3.0, "utterances": 2,
                                               "speakers": ["S1"]}
    ready = d(wire.Ready("id", {"a": 1}, {"asr": {"name": "x"}}))
    assert ready == {"type": "ready", "session_id": "id", "config": {"a": 1}, "models": {"asr": {"name": "x"}}}
    with pytest.raises(TypeError):
        d("final")  # type: ignore[arg-type]


def test_samples_to_seconds_rounds_to_milliseconds() -> None:
    assert wire.samples_to_seconds(1) == 0.0 and wire.samples_to_seconds(8) == 0.001
    assert wire.samples_to_seconds(16_000 * 3600) == 3600.0
