"""clients.view: speaker colours, line contents, and what a non-interactive console prints."""

from __future__ import annotations

import io

from rich.console import Console

from streaming import wire

from clients.captions import LiveCaptions
from clients.connection import StreamStatus
from clients.view import (SPEAKER_COLOURS, TerminalView, final_text, merged_text, partial_text, speaker_colour,
                          status_text)

S = wire.SAMPLE_RATE


def test_speaker_colours_follow_the_label_number() -> None:
    assert speaker_colour("S1", []) == SPEAKER_COLOURS[0]
    assert speaker_colour("S2", []) == SPEAKER_COLOURS[1]
    assert speaker_colour("ch0", []) == SPEAKER_COLOURS[0]
    assert speaker_colour("S9", []) == SPEAKER_COLOURS[8 % len(SPEAKER_COLOURS)]
    assert speaker_colour("Анна", ["Борис", "Анна"]) == SPEAKER_COLOURS[1]
    assert speaker_colour(None, []) == "white"


def test_final_line_has_time_label_and_text_in_the_speakers_colour() -> None:
    line = final_text(wire.Final(0, 0, int(61.25 * S), 62 * S, " один два ", (), "S2"), ["S1", "S2"])
    assert line.plain == "[01:01.250] S2  один два"
    assert any(SPEAKER_COLOURS[1] in str(span.style) for span in line.spans)


def test_partial_and_status_lines() -> None:
    captions = LiveCaptions()
    captions.new_session(0)
    captions.receive(wire.Partial(0, 0, S, 2 * S, "три четыре", "S1"), audio_sent=3 * S)
    assert partial_text(captions).plain == "[00:01.000] S1  три четыре …"
    status = StreamStatus(state="reconnecting", detail="lost; retrying in 1.0 s", audio_sent=3 * S,
                          session_id="abc", reconnects=1)
    text = status_text(status, captions).plain
    for piece in ("reconnecting", "sent 3.0 s", "lag 1.0 s", "1 speaker ", "reconnects 1", "session abc",
                  "retrying in 1.0 s"):
        assert piece in text


def printed(events: list[wire.ServerEvent], end_state: str = "streaming") -> tuple[list[str], LiveCaptions]:
    """What a non-interactive view prints for ``events`` (the status line last), and the captions."""
    out = io.StringIO()
    view = TerminalView(Console(file=out, width=100, color_system=None), live=False)
    captions, status = LiveCaptions(), StreamStatus(state="streaming")
    captions.new_session(0)
    view.attach(captions, status)
    with view:
        for event in events:
            view.event(captions.receive(event))
        status.state = end_state
    return out.getvalue().splitlines(), captions


def test_non_interactive_view_prints_finals_and_notices_only() -> None:
    lines, _ = printed([wire.Partial(0, 0, 0, S, "оди"), wire.Final(0, 0, 0, S, "один", (), "S1"),
                        wire.Warning("audio_dropped", "too slow", 2.0)], end_state="done")
    assert lines[0] == "[00:00.000] S1  один"
    assert lines[1] == "server warning audio_dropped: too slow (2.0 s dropped)"
    assert lines[2].startswith("● done") and len(lines) == 3  # the partial never reached a pipe


def test_a_speaker_merge_is_a_notice_line_in_the_kept_speakers_colour() -> None:
    lines, captions = printed([wire.Final(0, 0, 0, S, "один", (), "S2"), wire.SpeakerMerge(0, "S2", "S1", S)])
    assert lines[:2] == ["[00:00.000] S2  один", "↻ S2 is S1: lines above labelled S2 are S1's"]
    assert lines[2].endswith("1 speaker") and captions.finals[0].speaker == "S1"
    line = merged_text(wire.SpeakerMerge(0, "S2", "S1", S), [])
    assert [line.plain[s.start:s.end] for s in line.spans if "bold" in str(s.style)] == ["S2", "S1"]
    assert any(SPEAKER_COLOURS[0] in str(s.style) for s in line.spans)
