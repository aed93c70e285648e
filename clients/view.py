"""The terminal view of a stream: finals scroll up in speaker colours, the partial and a status line stay at the bottom.

Rendering is split from I/O: :func:`final_text`, :func:`partial_text` and :func:`status_text` build rich ``Text``
from the client's state, and :class:`TerminalView` prints finals above a ``rich.live.Live`` region holding the rest.
On a terminal that is not interactive (a pipe, CI) only finals and notices are printed, one line each.
"""

from __future__ import annotations

import io
import re
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from streaming import wire

from clients.captions import LiveCaptions
from clients.connection import StreamStatus
from clients.formats import format_timestamp, speaker_of

__all__ = ["SPEAKER_COLOURS", "speaker_colour", "final_text", "revised_text", "merged_text", "partial_text",
           "status_text", "snapshot_svg", "TerminalView"]

#: Colours by speaker number (S1 → first); chosen to stay readable on dark and light backgrounds.
SPEAKER_COLOURS = ("cyan", "magenta", "green", "yellow", "bright_blue", "red", "bright_cyan", "bright_magenta")
_STATE_STYLE = {"streaming": "green", "finishing": "green", "done": "bold green", "connecting": "yellow",
                "reconnecting": "bold yellow", "failed": "bold red"}


def speaker_colour(label: Optional[str], known: list[str]) -> str:
    """``S3``/``ch2`` → colour by number; other labels by order of appearance in ``known``; no label → white."""
    if not label:
        return "white"
    match = re.fullmatch(r"(?:S|ch)(\d+)", label)
    if match:
        index = int(match.group(1)) - (1 if label.startswith("S") else 0)
    else:
        index = known.index(label) if label in known else len(known)
    return SPEAKER_COLOURS[index % len(SPEAKER_COLOURS)]


def _clock(samples: int) -> str:
    stamp = format_timestamp(samples, ".")
    return stamp[3:] if stamp.startswith("00:") else stamp  # MM:SS.mmm under an hour


def final_text(final: wire.Final, known: list[str]) -> Text:
    """``[00:01.200] S1  один два три`` with the label and text in the speaker's colour."""
    label = speaker_of(final)
    colour = speaker_colour(label, known)
    line = Text()
    line.append(f"[{_clock(final.start)}] ", style="dim")
    if label:
        line.append(f"{label:<4}", style=f"bold {colour}")
    line.append(final.text.strip(), style=colour)
    return line


def revised_text(final: wire.Final, known: list[str]) -> Text:
    """A final line again after a speaker revision, marked ``↻`` (the terminal cannot rewrite scrolled lines)."""
    line = Text("↻ ", style="dim")
    line.append_text(final_text(final, known))
    return line


def merged_text(merge: wire.SpeakerMerge, known: list[str]) -> Text:
    """``↻ S7 is S2: lines above labelled S7 are S2's`` in the kept speaker's colour (scrolled lines stay; the
    output files and :class:`LiveCaptions` carry the kept label)."""
    line = Text("↻ ", style="dim")
    line.append(merge.merged, style=f"bold {speaker_colour(merge.merged, known)}")
    line.append(" is ", style="dim")
    line.append(merge.into, style=f"bold {speaker_colour(merge.into, known)}")
    line.append(f": lines above labelled {merge.merged} are {merge.into}'s", style="dim")
    return line


def partial_text(captions: LiveCaptions) -> Text:
    """The open partial of each channel, grey and italic, or an empty line."""
    line = Text()
    partials = dict(captions.partials)  # one atomic copy: the live display renders from its own thread
    for channel in sorted(partials):
        p = partials[channel]
        if line:
            line.append("  |  ", style="dim")
        label = p.speaker or (f"ch{p.channel}" if p.channel else "")
        line.append(f"[{_clock(p.start)}] " + (f"{label:<4}" if label else ""), style="dim")
        line.append(p.text + " …", style="italic grey50")
    return line


def _seconds(samples: int) -> str:
    return f"{samples / wire.SAMPLE_RATE:.1f} s"


def status_text(status: StreamStatus, captions: LiveCaptions) -> Text:
    """``● streaming  sent 12.3 s  lag 0.8 s  2 speakers  session abc`` plus the state's detail."""
    line = Text()
    line.append(f"● {status.state}", style=_STATE_STYLE.get(status.state, "white"))
    line.append(f"  sent {_seconds(status.audio_sent)}")
    if captions.lag is not None:
        line.append(f"  lag {_seconds(captions.lag)}")
    if captions.speakers:
        n = len(captions.speakers)
        line.append(f"  {n} speaker{'s' if n != 1 else ''}")
    if status.reconnects:
        line.append(f"  reconnects {status.reconnects}", style="yellow")
    if status.session_id:
        line.append(f"  session {status.session_id[:8]}", style="dim")
    if status.detail and status.state not in ("streaming",):
        line.append(f"  {status.detail}", style="dim")
    return line


def snapshot_svg(captions: LiveCaptions, status: StreamStatus, title: str = "rechka-stream",
                 width: int = 96, last: int = 12) -> str:
    """What the terminal shows now (the ``last`` finals, the partial, the status line) as an SVG image."""
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", highlight=False)
    for final in captions.finals[-last:]:
        console.print(final_text(final, captions.speakers))
    console.print(partial_text(captions))
    console.print(status_text(status, captions))
    return console.export_svg(title=title)


class TerminalView:
    """Live captions on a console. Call :meth:`event` for each server event and :meth:`refresh` on status changes;
    use as a context manager around the stream."""

    def __init__(self, console: Optional[Console] = None, live: Optional[bool] = None) -> None:
        self.console = console or Console(highlight=False)
        self.interactive = self.console.is_terminal if live is None else live
        self.captions: Optional[LiveCaptions] = None
        self.status: Optional[StreamStatus] = None
        self._live: Optional[Live] = None

    def attach(self, captions: LiveCaptions, status: StreamStatus) -> None:
        self.captions, self.status = captions, status

    def __enter__(self) -> "TerminalView":
        if self.interactive:
            self._live = Live(self, console=self.console, refresh_per_second=10, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        if self.status is not None and self.captions is not None:
            self.console.print(status_text(self.status, self.captions))

    def __rich__(self) -> Group:
        """The live region, rebuilt at each refresh (so "sent" and "lag" move between events)."""
        if self.captions is None or self.status is None:
            return Group(Text(""))
        return Group(partial_text(self.captions), status_text(self.status, self.captions))

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def note(self, message: str, style: str = "yellow") -> None:
        """A notice line (warning, reconnect) above the live region."""
        self.console.print(Text(message, style=style))

    def event(self, event: wire.ServerEvent) -> None:
        known = self.captions.speakers if self.captions is not None else []
        if isinstance(event, wire.Final) and event.text.strip():
            self.console.print(final_text(event, known))
        elif isinstance(event, wire.SpeakerRevision) and self.captions is not None:
            for final in self.captions.revised(event):  # lines already printed stay: the correction follows
                self.console.print(revised_text(final, known))
        elif isinstance(event, wire.SpeakerMerge):
            self.console.print(merged_text(event, known))
        elif isinstance(event, wire.Warning):
            extra = f" ({event.dropped_seconds:.1f} s dropped)" if event.dropped_seconds else ""
            self.note(f"server warning {event.code}: {event.message}{extra}")
        elif isinstance(event, wire.Error):
            self.note(f"server error {event.code}: {event.message}", "bold red")
        self.refresh()
