"""Streaming diarization of one channel: windowed segmentation → per-speaker embeddings → tracked global labels.

Life of a window (see :mod:`streaming.windows` for the schedule and the aggregation):

1. :meth:`StreamingDiarizer.on_audio` hands out a :class:`~streaming.work.SegmentationRequest` per due window.
2. Its result gives ``scores[f, k]`` for up to K local speakers. Every local speaker active somewhere in the window
   (score > ``tau_active``) gets one :class:`~streaming.work.EmbeddingRequest` per *segment* of its clean speech
   (frames where it is the only active speaker; its overlapped frames when the clean ones hold less than
   ``min_embedding_speech``), see :mod:`streaming.voice_segments`. Segments whose embeddings disagree split the
   local speaker into several voices: the model sometimes gives two speakers who follow each other one local
   speaker.
3. Windows are then resolved strictly in order, once all their embeddings are back: the
   :class:`~streaming.speakers.SpeakerTracker` maps the voices with clean embeddings to global ones (a new global
   speaker needs ``new_speaker_windows`` windows of confirmation), voices with overlap embeddings may only match a
   free existing speaker (``overlap_match_threshold``); voices that joined a candidate new speaker wait for it;
   the others are mapped by score continuity (the global speaker whose activity in the previous window agrees with
   theirs on the frames both windows cover, see ``continuity_threshold``) or left out of this window. When a
   candidate is confirmed, the earlier windows' waiting voices are credited to it on the frames not final yet.
   The mapped scores are aggregated onto the global grid, except where a left-out speaker is active: there the
   window cannot say which speaker it heard, so it abstains on every speaker it did not name (rather than voting
   them silent). Each window also reports how many speakers it heard per frame, named or not. When the tracker
   merges two speakers (one voice had two labels), the merged one's votes on frames not final yet go to the one
   kept, and a :class:`~streaming.wire.SpeakerMerge` (:meth:`StreamingDiarizer.pop_merges`) tells clients to
   relabel what they already received: no turn or label after it carries the merged label.
4. Frames up to ``end of the last resolved window - latency`` become final: their binarised activity is merged
   into turns per global speaker (``binarization``: by default the windows' mean speaker count decides how many
   speakers a frame has, the highest aggregated scores which). Turns may overlap (two speakers at once).

One class per stage: :class:`~streaming.windows.SegmentationWindows` (schedule, aggregate),
:mod:`streaming.voice_segments` (what to embed, voices of a local speaker), :class:`~streaming.speakers.SpeakerTracker`
(global speakers), :class:`~streaming.continuity.ContinuityMap` (mapping by continuity),
:class:`~streaming.candidate_voices.CandidateVoices` (voices waiting for a candidate) and
:class:`~streaming.final_turns.FinalTurns` (final turns, ``speaker_for``); this module drives them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Optional

import numpy as np

from streaming import wire
from streaming.candidate_voices import CandidateVoices
from streaming.config import DiarizationOptions
from streaming.continuity import ContinuityMap
from streaming.final_turns import FinalTurns
from streaming.speakers import SpeakerTracker, label_of
from streaming.voice_segments import (Segment, acoustic_pauses, nest_pieces, plan_probes, plan_segments,
                                     refine_at_pauses, split_by_voice, split_probes)
from streaming.windows import FrameGeometry, SampleSource, SegmentationWindows, Window
from streaming.work import EmbeddingRequest, EmbeddingResult, Request, Result, SegmentationRequest, SegmentationResult


class _Stage(IntEnum):
    SEGMENTING = 0
    EMBEDDING = 1
    READY = 2


@dataclass(eq=False)
class _PendingWindow:
    window: Window
    audio: np.ndarray
    seq: int
    stage: _Stage = _Stage.SEGMENTING
    scores: Optional[np.ndarray] = None                            # (frames, local speakers)
    active: list[int] = field(default_factory=list)               # locally active speakers
    segments: dict[int, list[Segment]] = field(default_factory=dict)  # local speaker → its embedded segments
    probes: dict[int, list[Segment]] = field(default_factory=dict)    # local speaker → its probes (after segments)
    pieces: dict[int, dict[int, list[Segment]]] = field(default_factory=dict)  # local speaker → segment → pieces
    waiting: dict[int, tuple[int, int]] = field(default_factory=dict)  # embedding seq → (local speaker, segment)
    embeddings: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (local speaker, segment) → vector


class StreamingDiarizer:
    """Windowed segmentation + embedding tracking for one channel of one session (sans-I/O)."""

    def __init__(self, options: DiarizationOptions, session_id: str, channel: int,
                 next_seq: Callable[[], int]) -> None:
        self.options = options
        self.session_id = session_id
        self.channel = channel
        self._next_seq = next_seq
        self.windows = SegmentationWindows(options)
        self.tracker = SpeakerTracker(options)
        self._pending: deque[_PendingWindow] = deque()
        self._by_seq: dict[int, _PendingWindow] = {}
        self.continuity = ContinuityMap(options, self.windows)
        self.candidate_voices = CandidateVoices(options, self.windows)
        self.turns = FinalTurns(options, self.windows, channel)
        self._finishing = False
        self._audio_end = 0
        self._new_merges: list[wire.SpeakerMerge] = []

    # ------------------------------------------------------------------------------------------------ requests
    def on_audio(self, buffer: SampleSource) -> list[Request]:
        """Segmentation requests for the windows now due."""
        if self._finishing:
            return []
        return [self._segment(w, buffer) for w in self.windows.due(buffer.end)]

    def finish(self, buffer: SampleSource) -> list[Request]:
        """End of stream: the windows still due plus one ending at the last sample; everything becomes final once
        their results are in."""
        if self._finishing:
            return []
        requests = self.on_audio(buffer)
        self._finishing = True
        self._audio_end = self.turns.audio_end = buffer.end
        tail = self.windows.tail(buffer.end)
        if tail is not None:
            requests.append(self._segment(tail, buffer))
        self._advance()
        return requests

    def owns(self, seq: int) -> bool:
        return seq in self._by_seq

    def on_result(self, result: Result, buffer: Optional[SampleSource] = None) -> list[Request]:
        """Take a segmentation or embedding result; may return embedding requests. Unknown seqs are ignored;
        a result of the wrong kind for a known seq raises ``TypeError`` (a routing bug, not client input)."""
        pending = self._by_seq.get(result.seq)
        if pending is None:
            return []
        requests: list[Request] = []
        if isinstance(result, SegmentationResult) and pending.stage == _Stage.SEGMENTING:
            del self._by_seq[result.seq]
            self.windows.set_geometry(FrameGeometry(result.frame_step, result.frame_duration, result.frame_offset))
            pending.scores = np.asarray(result.scores, dtype=np.float64).reshape(len(result.scores), -1)
            requests = self._embed(pending)
            pending.stage = _Stage.EMBEDDING if pending.waiting else _Stage.READY
        elif isinstance(result, EmbeddingResult) and result.seq in pending.waiting:
            del self._by_seq[result.seq]
            pending.embeddings[pending.waiting.pop(result.seq)] = np.asarray(result.embedding, dtype=np.float64)
            if not pending.waiting:
                pending.stage = _Stage.READY
        else:
            raise TypeError(f"{type(result).__name__} for seq {result.seq}, which awaits another kind of result")
        self._advance()
        return requests

    @property
    def idle(self) -> bool:
        """Nothing in flight."""
        return not self._pending

    @property
    def oldest_needed(self) -> int:
        """Windows copy their audio when requested, so only the next window's start matters."""
        if self._finishing:
            return self._audio_end
        return max(0, self.windows.next_start)

    def _segment(self, window: Window, buffer: SampleSource) -> SegmentationRequest:
        window, audio = self.windows.cut(window, buffer)
        seq = self._next_seq()
        pending = _PendingWindow(window, audio, seq)
        self._pending.append(pending)
        self._by_seq[seq] = pending
        return SegmentationRequest(self.session_id, seq, self.channel, window.start, audio)

    def _embed(self, pending: _PendingWindow) -> list[Request]:
        scores = pending.scores
        assert scores is not None and self.windows.geometry is not None
        n_frames = len(scores)
        valid = self.windows.valid_frames(pending.window, n_frames)
        active = (scores > self.options.tau_active) & valid[:, None]
        clean = active & (active.sum(axis=1) == 1)[:, None]
        lo, hi = self.windows.geometry.bounds(n_frames)
        lo = np.clip(lo, pending.window.pad, len(pending.audio))
        hi = np.clip(hi, pending.window.pad, len(pending.audio))
        pending.active = [k for k in range(scores.shape[1]) if active[:, k].any()]
        requests: list[Request] = []
        step = self.windows.geometry.step
        quiet = acoustic_pauses(pending.audio, lo, hi, self.options, step)
        first_valid = int(np.argmax(valid)) if valid.any() else 0
        for k in pending.active:
            segments = plan_segments(clean[:, k], active[:, k], lo, hi, self.options, step)
            pending.segments[k] = segments
            confident = clean[:, k] & (scores[:, k] > self.options.probe_level)
            pending.probes[k] = plan_probes(confident, lo, hi, self.options, step) if segments else []
            pieces = plan_segments(clean[:, k], active[:, k], lo, hi, self.options, step, quiet) \
                if segments and quiet.any() else []
            pending.pieces[k] = nest_pieces(segments, pieces)
            extra = [p for i in sorted(pending.pieces[k]) for p in pending.pieces[k][i]]
            for i, segment in enumerate(segments + pending.probes[k] + extra):
                seq = self._next_seq()
                pending.waiting[seq] = (k, i)
                self._by_seq[seq] = pending
                audio = np.concatenate([pending.audio[a:b] for a, b in segment.spans])
                start = pending.window.start
                requests.append(EmbeddingRequest(self.session_id, seq, self.channel, start + segment.spans[0][0], audio,
                                                 window_seq=pending.seq, local_speaker=k,
                                                 spans=tuple((start + a, start + b) for a, b in segment.spans),
                                                 window_edge=segment.first <= first_valid))
        return requests

    # ------------------------------------------------------------------------------------------------ resolution
    def _advance(self) -> None:
        while self._pending and self._pending[0].stage == _Stage.READY:
            pending = self._pending.popleft()
            self._aggregate(pending)
            if not self._finishing or self._pending:
                self.turns.finalize(self.candidate_voices.final_edge(pending.window.end, self.tracker.candidates))
        if self._finishing and not self._pending:
            self.turns.finalize(self._audio_end, last=True)

    def _aggregate(self, pending: _PendingWindow) -> None:
        scores = pending.scores
        assert scores is not None
        columns, active, clean, overlapped = [], [], {}, {}
        probes: list[tuple[int, Segment, np.ndarray]] = []  # (voice column it lies in, probe, its embedding)
        for k in pending.active:
            segments = pending.segments.get(k, [])
            embeddings = [pending.embeddings[(k, i)] for i in range(len(segments))]
            n = len(segments) + len(pending.probes.get(k, []))
            pieces, piece_embeddings = pending.pieces.get(k, {}), {}
            for i in sorted(pieces):
                piece_embeddings[i] = [pending.embeddings[(k, n + j)] for j in range(len(pieces[i]))]
                n += len(pieces[i])
            refined, refined_embeddings = refine_at_pauses(segments, embeddings, pieces, piece_embeddings,
                                                           self.options.change_threshold, self._sounds_like)
            voices = split_by_voice(scores[:, k], refined, refined_embeddings, self.options.change_threshold,
                                    self._sounds_like)
            if not voices:
                active.append(len(columns))
                columns.append(scores[:, k])
            for j, probe in enumerate(pending.probes.get(k, [])):
                parent = len(columns) if probe.first == 0 else len(columns) + len(voices) - 1
                probes.append((parent, probe, pending.embeddings[(k, len(segments) + j)]))
            for voice in voices:
                (overlapped if voice.overlapped else clean)[len(columns)] = voice.embedding
                active.append(len(columns))
                columns.append(voice.scores)
        mapping: dict[int, int] = {}
        assert self.windows.geometry is not None
        hi = self.windows.geometry.bounds(len(scores))[1]
        ends = []  # where each clean voice's speech ends in this window: what is fresh evidence for a candidate
        for c in clean:
            heard = np.flatnonzero(columns[c] > self.options.tau_active)
            ends.append(pending.window.start + int(hi[heard[-1]]) if heard.size else pending.window.start)
        for c, g in zip(clean, self.tracker.assign(list(clean.values()), at=pending.window.end, speech_ends=ends)):
            if g is not None:
                mapping[c] = g
        for gone, keep in self.tracker.merges:
            self._merge(gone, keep, pending.window.end)
        waiting = {c: key for c, key in zip(clean, self.tracker.joined) if key is not None}  # c → candidate key
        for c, g in zip(overlapped, self.tracker.match(list(overlapped.values()), exclude=list(mapping.values()),
                                                       threshold=self.options.overlap_match_threshold)):
            if g is not None:
                mapping[c] = g
        columns += split_probes(columns, probes, mapping, self.tracker, self.options, active)
        voices_scores = np.stack(columns, axis=1) if columns else np.zeros((len(scores), 0))
        self.continuity.map(pending.window, voices_scores, [c for c in active if c not in waiting], mapping,
                            self.tracker)
        n_frames = len(scores)
        valid = self.windows.valid_frames(pending.window, n_frames)
        mapped = np.zeros((n_frames, max(self.tracker.n_speakers, self.windows.n_speakers, 1)))
        for c, g in mapping.items():
            mapped[:, g] = np.maximum(mapped[:, g], voices_scores[:, c])
        mapped[~valid] = 0.0
        tau = self.options.tau_active
        unnamed = (voices_scores[:, [c for c in active if c not in mapping]] > tau).any(axis=1)
        heard = (voices_scores > tau) & valid[:, None]
        self.windows.add(pending.window, mapped, abstain=unnamed[:, None] & (mapped <= tau), unnamed=unnamed,
                         talkers=heard.sum(axis=1))
        self.continuity.remember(pending.window, mapped)
        self.candidate_voices.credit(pending.window, voices_scores, waiting, self.tracker)

    def _sounds_like(self, embedding: np.ndarray) -> Optional[int]:
        """The live speaker nearest to ``embedding`` within ``new_speaker_threshold`` when every other one lies at
        least ``pause_margin`` farther, else ``None``."""
        if not self.tracker.n_speakers:
            return None
        distances = self.tracker.distances(embedding[None, :])[0]
        nearest, ordered = int(np.argmin(distances)), np.sort(distances)
        if ordered[0] > self.options.new_speaker_threshold or \
                (len(ordered) > 1 and ordered[1] - ordered[0] < self.options.pause_margin):
            return None
        return nearest

    def _merge(self, gone: int, keep: int, at: int) -> None:
        """The tracker merged speaker ``gone`` into ``keep``: what is not final yet (aggregate, open runs, turns not
        popped) and what ``speaker_for`` reads (history) become ``keep``'s, and a ``SpeakerMerge`` is queued so that
        clients relabel what they already received."""
        self.windows.merge_speakers(gone, keep)
        merge = wire.SpeakerMerge(self.channel, label_of(gone), label_of(keep), at)
        self.turns.merge(gone, keep, merge)
        self._new_merges.append(merge)

    # ------------------------------------------------------------------------------------------------ output
    @property
    def final_until(self) -> int:
        """Frames before this sample are final (their turns popped or queued)."""
        return self.turns.final_until

    def pop_final_turns(self) -> list[wire.Turn]:
        """Turns finalised since the last call, ordered by end (unpopped ones are kept for ``options.history`` only)."""
        return self.turns.pop()

    def pop_merges(self) -> list[wire.SpeakerMerge]:
        """Speaker merges since the last call, in order (after one, no turn or label carries the merged label)."""
        merges, self._new_merges = self._new_merges, []
        return merges

    @property
    def speakers(self) -> tuple[str, ...]:
        """Labels that occur in final output so far, in label order."""
        return self.turns.speakers

    def speaker_for(self, start: int, end: int) -> Optional[str]:
        """The label with the largest overlap with ``[start, end)`` (see :meth:`FinalTurns.speaker_for`)."""
        return self.turns.speaker_for(start, end)
