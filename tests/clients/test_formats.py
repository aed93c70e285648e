"""clients.formats: exact SRT/VTT/RTTM/TXT output for known finals, cue splitting, JSON, and the readers."""

from __future__ import annotations

import json

import pytest

from streaming import wire

from clients import formats

S = wire.SAMPLE_RATE


def words(text: str, start: float, step: float, speaker: str | None = None) -> tuple[wire.WordTiming, ...]:
    return tuple(wire.WordTiming(w, int((start + i * step) * S), int((start + (i + 1) * step - 0.05) * S), speaker)
                 for i, w in enumerate(text.split()))


FINALS = [
    wire.Final(0, 0, int(1.2 * S), int(2.5 * S), "один два", words("один два", 1.2, 0.65, "S1"), "S1"),
    wire.Final(1, 0, int(3.0 * S), int(4.0 * S), "три", words("три", 3.0, 1.0, "S2"), "S2"),
    wire.Final(2, 0, int(5.0 * S), int(5.5 * S), "  ", (), "S1"),  # empty: skipped everywhere
    wire.Final(3, 0, int(3661.5 * S), int(3662.25 * S), "a<b & c", (), None),
]


def test_timestamps() -> None:
    assert formats.format_timestamp(int(3661.5 * S)) == "01:01:01,500"
    assert formats.format_timestamp(int(0.0005 * S), ".") == "00:00:00.001"  # 8 samples = 0.5 ms rounds up
    assert formats.format_timestamp(-5) == "00:00:00,000"


def test_srt_exact() -> None:
    assert formats.to_srt(FINALS) == (
        "1\n00:00:01,200 --> 00:00:02,500\nS1: один два\n\n"
        "2\n00:00:03,000 --> 00:00:04,000\nS2: три\n\n"
        "3\n01:01:01,500 --> 01:01:02,250\na<b & c\n")


def test_vtt_exact_with_voice_spans_and_escaping() -> None:
    assert formats.to_vtt(FINALS) == (
        "WEBVTT\n\n"
        "00:00:01.200 --> 00:00:02.500\n<v S1>один два\n\n"
        "00:00:03.000 --> 00:00:04.000\n<v S2>три\n\n"
        "01:01:01.500 --> 01:01:02.250\na&lt;b &amp; c\n")


def test_txt_exact() -> None:
    assert formats.to_txt(FINALS) == (
        "[00:00:01.200 - 00:00:02.500] S1: один два\n"
        "[00:00:03.000 - 00:00:04.000] S2: три\n"
        "[01:01:01.500 - 01:01:02.250] a<b & c\n")


def test_rttm_from_turns() -> None:
    turns = [wire.Turn("S2", int(3 * S), int(4 * S)), wire.Turn("S1", int(1.2 * S), int(2.5 * S)),
             wire.Turn("ch1", 0, S // 2, 1), wire.Turn("S9", 10, 10)]  # zero-length: skipped
    assert formats.to_rttm(turns, "my file") == (
        "SPEAKER my_file 2 0.000 0.500 <NA> <NA> ch1 <NA> <NA>\n"
        "SPEAKER my_file 1 1.200 1.300 <NA> <NA> S1 <NA> <NA>\n"
        "SPEAKER my_file 1 3.000 1.000 <NA> <NA> S2 <NA> <NA>\n")


def test_turns_from_finals_use_word_speakers_and_merge_neighbours() -> None:
    final = wire.Final(0, 0, 0, 4 * S, "a b c d", (
        wire.WordTiming("a", 0, S, "S1"), wire.WordTiming("b", S + 100, 2 * S, "S1"),
        wire.WordTiming("c", 2 * S, 3 * S, "S2"), wire.WordTiming("d", 3 * S, 4 * S, "S1")), "S1")
    assert formats.turns_from_finals([final]) == [
        wire.Turn("S1", 0, 2 * S), wire.Turn("S2", 2 * S, 3 * S), wire.Turn("S1", 3 * S, 4 * S)]
    # gaps larger than merge_gap keep turns apart
    assert len(formats.turns_from_finals([final], merge_gap=50)) == 4


def test_long_final_is_split_at_words_within_limits() -> None:
    text = " ".join(f"слово{i}" for i in range(30))
    final = wire.Final(0, 0, 0, 30 * S, text, words(text, 0.0, 1.0, "S1"), "S1")
    cues = formats.cues_from_finals([final])
    assert len(cues) > 1
    assert " ".join(c.text for c in cues) == text  # nothing lost or repeated
    assert all(c.end - c.start <= formats.MAX_CUE_SAMPLES for c in cues)
    assert all(len(c.text) <= formats.MAX_CUE_CHARS for c in cues)
    assert cues[0].start == 0 and cues[-1].end == 30 * S
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))


def test_long_final_without_words_stays_whole() -> None:
    final = wire.Final(0, 0, 0, 30 * S, "x " * 100, (), None)
    assert len(formats.cues_from_finals([final])) == 1


def test_bad_cue_limits_raise() -> None:
    with pytest.raises(ValueError, match="max_cue_samples"):
        formats.cues_from_finals(FINALS, max_cue_samples=0)


def test_json_holds_finals_turns_speakers_and_extra() -> None:
    turns = formats.turns_from_finals(FINALS)
    doc = json.loads(formats.to_json(FINALS[:2], turns, wire.End(5 * S, 2, ("S1", "S2")), {"source": "x.wav"}))
    assert doc["source"] == "x.wav" and doc["speakers"] == ["S1", "S2"]
    assert [f["text"] for f in doc["finals"]] == ["один два", "три"]
    assert doc["finals"][0]["start"] == 1.2 and doc["finals"][0]["words"][0]["speaker"] == "S1"
    assert [t["speaker"] for t in doc["speaker_turns"]] == ["S1", "S2"]
    assert doc["end"]["audio_seconds"] == 5.0


def test_writers_and_readers_round_trip() -> None:
    kept = [f for f in FINALS if f.text.strip()]
    for writer, reader in ((formats.to_srt, formats.parse_srt), (formats.to_vtt, formats.parse_vtt)):
        cues = reader(writer(FINALS))
        assert [(c.start, c.end, c.text, c.speaker) for c in cues] == [
            (f.start, f.end, f.text, f.speaker) for f in kept]
    turns = formats.turns_from_finals(FINALS)
    assert [t for _, t in formats.parse_rttm(formats.to_rttm(turns, "x"))] == turns


def test_readers_accept_hand_written_files() -> None:
    srt = "1\r\n00:00:01,000 --> 00:00:02,500\r\nМария: привет\r\nкак дела\r\n\r\n2\r\n00:01:00,000 --> 00:01:01,000\r\nok\r\n"
    assert formats.parse_srt(srt) == [formats.Cue(S, int(2.5 * S), "привет\nкак дела", "Мария"),
                                      formats.Cue(60 * S, 61 * S, "ok", None)]
    vtt = "WEBVTT - title\n\nNOTE hello\n\nid1\n01:02.000 --> 01:03.000 align:start\n<v.loud Bob>hi</v>\n"
    assert formats.parse_vtt(vtt) == [formats.Cue(62 * S, 63 * S, "hi", "Bob")]
    with pytest.raises(ValueError, match="WEBVTT"):
        formats.parse_vtt("1\n00:00:01,000 --> 00:00:02,000\nx\n")
    rttm = ";; comment\nSPEAKER rec 1 0.50 1.25 <NA> <NA> spk_a <NA> <NA>\n"
    assert formats.parse_rttm(rttm) == [("rec", wire.Turn("spk_a", 8000, 28000, 0))]
