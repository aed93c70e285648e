"""Transcript files: SRT, WebVTT, RTTM, speaker-labelled text and JSON, plus readers for the first three.

Pure functions over protocol v1 events (:class:`streaming.wire.Final`, :class:`streaming.wire.Turn`) with times in
samples at 16 kHz; seconds appear only in the text they produce. Long finals are split into readable cues at word
boundaries when word timings are present (``max_cue_samples`` / ``max_cue_chars``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from streaming import wire

__all__ = [
    "Cue", "cues_from_finals", "format_timestamp", "speaker_of", "turns_from_finals", "to_srt", "to_vtt", "to_rttm",
    "to_txt", "to_json", "parse_srt", "parse_vtt", "parse_rttm",
]

SAMPLE_RATE = wire.SAMPLE_RATE
MAX_CUE_SAMPLES = 7 * SAMPLE_RATE  # subtitle guidelines: a cue stays on screen at most ~7 s
MAX_CUE_CHARS = 84  # two lines of 42 characters
MERGE_GAP = SAMPLE_RATE // 2  # RTTM: same-speaker turns closer than this are merged


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: ``[start, end)`` in samples, its text and speaker label (``None`` if unknown)."""

    start: int
    end: int
    text: str
    speaker: Optional[str] = None


def speaker_of(final: wire.Final) -> Optional[str]:
    """The label to show for a final: its speaker, else ``chN`` for a channel other than 0, else ``None``."""
    if final.speaker:
        return final.speaker
    return f"ch{final.channel}" if final.channel else None


def format_timestamp(samples: int, decimal: str = ",", hours: bool = True) -> str:
    """``HH:MM:SS,mmm`` (SRT) or with ``decimal='.'`` ``HH:MM:SS.mmm`` (WebVTT); negative times clamp to 0."""
    ms = max(0, (samples * 1000 + SAMPLE_RATE // 2) // SAMPLE_RATE)  # half up
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    head = f"{h:02d}:{m:02d}" if hours else f"{h * 60 + m:02d}"
    return f"{head}:{s:02d}{decimal}{ms:03d}"


def _split_words(final: wire.Final, max_samples: int, max_chars: int) -> list[Cue]:
    speaker = speaker_of(final)
    cues: list[Cue] = []
    group: list[wire.WordTiming] = []
    for word in final.words:
        if group:
            chars = len(" ".join(w.word for w in group)) + 1 + len(word.word)
            if chars > max_chars or word.end - group[0].start > max_samples:
                cues.append(Cue(group[0].start, group[-1].end, " ".join(w.word for w in group), speaker))
                group = []
        group.append(word)
    if group:
        cues.append(Cue(group[0].start, group[-1].end, " ".join(w.word for w in group), speaker))
    # keep the final's own bounds on the outer cues so no audio falls between cues
    cues[0] = Cue(min(final.start, cues[0].start), cues[0].end, cues[0].text, speaker)
    cues[-1] = Cue(cues[-1].start, max(final.end, cues[-1].end), cues[-1].text, speaker)
    return cues


def cues_from_finals(finals: Iterable[wire.Final], max_cue_samples: int = MAX_CUE_SAMPLES,
                     max_cue_chars: int = MAX_CUE_CHARS) -> list[Cue]:
    """Finals → cues in time order; empty finals are skipped, long ones split at word boundaries."""
    if max_cue_samples <= 0 or max_cue_chars <= 0:
        raise ValueError("max_cue_samples and max_cue_chars must be positive; the defaults are 7 s and 84")
    cues: list[Cue] = []
    for final in sorted(finals, key=lambda f: (f.start, f.channel)):
        text = final.text.strip()
        if not text:
            continue
        too_long = final.end - final.start > max_cue_samples or len(text) > max_cue_chars
        if too_long and final.words:
            cues.extend(_split_words(final, max_cue_samples, max_cue_chars))
        else:
            cues.append(Cue(final.start, final.end, text, speaker_of(final)))
    return cues


def to_srt(finals: Iterable[wire.Final], speakers: bool = True, **limits: int) -> str:
    """SubRip text; with ``speakers`` each cue starts with ``S1: ``."""
    blocks = []
    for i, cue in enumerate(cues_from_finals(finals, **limits), 1):
        text = f"{cue.speaker}: {cue.text}" if speakers and cue.speaker else cue.text
        blocks.append(f"{i}\n{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(finals: Iterable[wire.Final], speakers: bool = True, **limits: int) -> str:
    """WebVTT text; with ``speakers`` each cue is a voice span ``<v S1>…`` that players can style."""
    blocks = ["WEBVTT\n"]
    for cue in cues_from_finals(finals, **limits):
        text = _vtt_escape(cue.text)
        if speakers and cue.speaker:
            text = f"<v {_vtt_escape(cue.speaker)}>{text}"
        blocks.append(f"{format_timestamp(cue.start, '.')} --> {format_timestamp(cue.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def turns_from_finals(finals: Iterable[wire.Final], merge_gap: int = MERGE_GAP) -> list[wire.Turn]:
    """Speaker turns implied by finals (per word when words carry speakers), same-speaker neighbours merged."""
    pieces: list[wire.Turn] = []
    for final in finals:
        if not final.text.strip():
            continue
        if final.words and any(w.speaker for w in final.words):
            for w in final.words:
                label = w.speaker or speaker_of(final)
                if label:
                    pieces.append(wire.Turn(label, w.start, w.end, final.channel))
        elif speaker_of(final):
            pieces.append(wire.Turn(speaker_of(final), final.start, final.end, final.channel))  # type: ignore[arg-type]
    return merge_turns(pieces, merge_gap)


def merge_turns(turns: Iterable[wire.Turn], merge_gap: int = MERGE_GAP) -> list[wire.Turn]:
    """Sort turns and merge those of one speaker on one channel that overlap or are closer than ``merge_gap``."""
    merged: list[wire.Turn] = []
    last_on_channel: dict[int, int] = {}  # channel -> index in merged of its latest turn
    for t in sorted(turns, key=lambda t: (t.start, t.end)):
        if t.end <= t.start:
            continue
        i = last_on_channel.get(t.channel)
        if i is not None and merged[i].speaker == t.speaker and t.start - merged[i].end <= merge_gap:
            merged[i] = wire.Turn(t.speaker, merged[i].start, max(merged[i].end, t.end), t.channel)
        else:
            merged.append(t)
            last_on_channel[t.channel] = len(merged) - 1
    return merged


def to_rttm(turns: Iterable[wire.Turn], file_id: str) -> str:
    """NIST RTTM ``SPEAKER`` lines (channel numbered from 1); spaces in ``file_id`` become underscores."""
    file_id = re.sub(r"\s+", "_", file_id) or "audio"
    lines = []
    for t in sorted(turns, key=lambda t: (t.start, t.channel)):
        if t.end <= t.start:
            continue
        lines.append(f"SPEAKER {file_id} {t.channel + 1} {t.start / SAMPLE_RATE:.3f} "
                     f"{(t.end - t.start) / SAMPLE_RATE:.3f} <NA> <NA> {t.speaker} <NA> <NA>")
    return "".join(line + "\n" for line in lines)


def to_txt(finals: Iterable[wire.Final]) -> str:
    """One line per final: ``[HH:MM:SS.mmm - HH:MM:SS.mmm] S1: text`` (the label is omitted when unknown)."""
    lines = []
    for f in sorted(finals, key=lambda f: (f.start, f.channel)):
        if not f.text.strip():
            continue
        label = speaker_of(f)
        who = f"{label}: " if label else ""
        lines.append(f"[{format_timestamp(f.start, '.')} - {format_timestamp(f.end, '.')}] {who}{f.text.strip()}")
    return "".join(line + "\n" for line in lines)


def to_json(finals: Sequence[wire.Final], turns: Sequence[wire.Turn], end: Optional[wire.End] = None,
            extra: Optional[dict[str, Any]] = None) -> str:
    """Everything in one JSON document: finals and speaker turns as protocol v1 objects (seconds), plus ``extra``."""
    speakers: list[str] = []
    for label in [speaker_of(f) for f in finals] + [t.speaker for t in turns]:
        if label and label not in speakers:
            speakers.append(label)
    doc: dict[str, Any] = dict(extra or {})
    doc["speakers"] = speakers
    doc["finals"] = [wire.event_to_dict(f) for f in finals]
    doc["speaker_turns"] = wire.event_to_dict(wire.SpeakerTurns(tuple(turns)))["turns"]
    if end is not None:
        doc["end"] = wire.event_to_dict(end)
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


# ------------------------------------------------------------------------------------------------------- readers
_CUE_TIME = re.compile(r"^\s*((?:\d+:)?\d{2}:\d{2}[,.]\d{3})\s*-->\s*((?:\d+:)?\d{2}:\d{2}[,.]\d{3})")
_VOICE = re.compile(r"^<v(?:\.[^ >]*)?\s+([^>]+)>(.*)$", re.S)


def _parse_timestamp(text: str) -> int:
    parts = re.split(r"[:,.]", text)
    ms = int(parts[-1])
    secs = [int(p) for p in parts[:-1]]
    h, m, s = ([0] * (3 - len(secs)) + secs)[-3:]
    return int(round(((h * 60 + m) * 60 + s + ms / 1000) * SAMPLE_RATE))


def _parse_cues(text: str) -> list[tuple[int, int, str]]:
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        for i, line in enumerate(lines):
            match = _CUE_TIME.match(line)
            if match:
                body = "\n".join(lines[i + 1:]).strip()
                out.append((_parse_timestamp(match.group(1)), _parse_timestamp(match.group(2)), body))
                break
    return out


def parse_srt(text: str) -> list[Cue]:
    """Read SubRip cues; a leading ``Label: `` (no spaces in the label) becomes the speaker."""
    cues = []
    for start, end, body in _parse_cues(text):
        match = re.match(r"^(\S+): (.*)$", body, re.S)
        speaker, body = (match.group(1), match.group(2)) if match else (None, body)
        cues.append(Cue(start, end, body, speaker))
    return cues


def parse_vtt(text: str) -> list[Cue]:
    """Read WebVTT cues; a ``<v Label>`` span becomes the speaker; entities are unescaped."""
    if not text.lstrip("\ufeff").startswith("WEBVTT"):
        raise ValueError("not a WebVTT file: it must start with WEBVTT")
    cues = []
    for start, end, body in _parse_cues(text):
        match = _VOICE.match(body)
        speaker, body = (match.group(1).strip(), match.group(2)) if match else (None, body)
        body = re.sub(r"</v>", "", body).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        cues.append(Cue(start, end, body, speaker))
    return cues


def parse_rttm(text: str) -> list[tuple[str, wire.Turn]]:
    """Read RTTM ``SPEAKER`` lines as ``(file_id, Turn)`` pairs (channel back to 0-based)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            continue
        start = int(round(float(fields[3]) * SAMPLE_RATE))
        duration = int(round(float(fields[4]) * SAMPLE_RATE))
        out.append((fields[1], wire.Turn(fields[7], start, start + duration, int(fields[2]) - 1)))
    return out
