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
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

from streaming import wire
from streaming.config import DiarizationOptions, ms
from streaming.speakers import SpeakerTracker, label_of
from streaming.voice_segments import Segment, plan_segments, runs as _runs, split_by_voice
from streaming.windows import FrameGeometry, SampleSource, SegmentationWindows, Window, top_speakers
from streaming.work import EmbeddingRequest, EmbeddingResult, Request, Result, SegmentationRequest, SegmentationResult

NEAREST = ms(500)  # speaker_for() looks this far around a span in which nobody was heard


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
        self._finishing = False
        self._audio_end = 0
        self.final_until = 0
        self._open: dict[int, int] = {}           # global speaker → first frame of its unfinished final run
        self._history: list[tuple[int, int, int]] = []  # closed final turns (end, start, global), sorted
        self._new_turns: list[wire.Turn] = []
        self._new_merges: list[wire.SpeakerMerge] = []
        self._seen: set[int] = set()
        self._previous: Optional[tuple[Window, np.ndarray]] = None  # last resolved window, mapped scores
        self._candidate_voices: list[tuple[int, Window, np.ndarray]] = []  # (candidate key, window, its scores)

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
        self._audio_end = buffer.end
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
        for k in pending.active:
            segments = plan_segments(clean[:, k], active[:, k], lo, hi, self.options, self.windows.geometry.step)
            pending.segments[k] = segments
            for i, segment in enumerate(segments):
                seq = self._next_seq()
                pending.waiting[seq] = (k, i)
                self._by_seq[seq] = pending
                audio = np.concatenate([pending.audio[a:b] for a, b in segment.spans])
                start = pending.window.start
                requests.append(EmbeddingRequest(self.session_id, seq, self.channel, start + segment.spans[0][0], audio,
                                                 window_seq=pending.seq, local_speaker=k,
                                                 spans=tuple((start + a, start + b) for a, b in segment.spans)))
        return requests

    # ------------------------------------------------------------------------------------------------ resolution
    def _advance(self) -> None:
        while self._pending and self._pending[0].stage == _Stage.READY:
            pending = self._pending.popleft()
            self._aggregate(pending)
            if not self._finishing or self._pending:
                self._finalize(self._final_edge(pending.window.end))
        if self._finishing and not self._pending:
            self._finalize(self._audio_end, last=True)

    def _final_edge(self, end: int) -> int:
        """How far frames may become final once the window ending at ``end`` is resolved: ``latency`` behind it,
        but not past the first speech of a voice still waiting for its candidate new speaker (at most ``window``
        behind), so a confirmed speaker is credited with all of it."""
        edge = end - self.options.latency
        waiting = self.tracker.candidates
        tau = self.options.tau_active
        for key, window, column in self._candidate_voices:
            heard = np.flatnonzero(column > tau)
            if key in waiting and heard.size:
                edge = min(edge, self.windows.frame_start(self.windows.global_index(window) + int(heard[0])))
        return max(edge, end - self.options.window)

    def _aggregate(self, pending: _PendingWindow) -> None:
        scores = pending.scores
        assert scores is not None
        columns, active, clean, overlapped = [], [], {}, {}
        for k in pending.active:
            segments = pending.segments.get(k, [])
            voices = split_by_voice(scores[:, k], segments, [pending.embeddings[(k, i)] for i in range(len(segments))],
                                    self.options.change_threshold)
            if not voices:
                active.append(len(columns))
                columns.append(scores[:, k])
            for voice in voices:
                (overlapped if voice.overlapped else clean)[len(columns)] = voice.embedding
                active.append(len(columns))
                columns.append(voice.scores)
        voices_scores = np.stack(columns, axis=1) if columns else np.zeros((len(scores), 0))
        mapping: dict[int, int] = {}
        for c, g in zip(clean, self.tracker.assign(list(clean.values()), at=pending.window.end)):
            if g is not None:
                mapping[c] = g
        for gone, keep in self.tracker.merges:
            self._merge(gone, keep, pending.window.end)
        waiting = {c: key for c, key in zip(clean, self.tracker.joined) if key is not None}  # c → candidate key
        for c, g in zip(overlapped, self.tracker.match(list(overlapped.values()), exclude=list(mapping.values()),
                                                       threshold=self.options.overlap_match_threshold)):
            if g is not None:
                mapping[c] = g
        self._map_by_continuity(pending.window, voices_scores, [c for c in active if c not in waiting], mapping)
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
        self._previous = (pending.window, mapped)
        self._credit_candidates(pending.window, voices_scores, waiting)

    def _credit_candidates(self, window: Window, scores: np.ndarray, waiting: dict[int, int]) -> None:
        """Keep the voices of this window that joined a candidate new speaker; when a candidate became a speaker
        in this window, add its earlier voices' votes to the frames that are not final yet (those windows abstained
        there, not knowing the speaker)."""
        tau = self.options.tau_active
        self._candidate_voices.extend((key, window, scores[:, c].copy()) for c, key in waiting.items())
        for key, g in self.tracker.promoted:
            g = self.tracker.live(g)
            for voice_key, voice_window, column in self._candidate_voices:
                if voice_key == key:
                    votes = np.zeros((len(column), max(g + 1, self.windows.n_speakers)))
                    votes[:, g] = column
                    abstain = np.ones(votes.shape, dtype=bool)
                    abstain[:, g] = column <= tau
                    self.windows.add(voice_window, votes, abstain=abstain, unnamed=np.ones(len(column), dtype=bool))
        waiting = set(self.tracker.candidates)  # promoted and expired candidates are done with
        edge = self.windows.frame_start(self.windows.frozen) if self.windows.frozen is not None else None
        self._candidate_voices = [v for v in self._candidate_voices
                                  if v[0] in waiting and (edge is None or v[1].end > edge)]

    def _merge(self, gone: int, keep: int, at: int) -> None:
        """The tracker merged speaker ``gone`` into ``keep``: what is not final yet (aggregate, open runs, turns not
        popped) and what ``speaker_for`` reads (history) become ``keep``'s, and a ``SpeakerMerge`` is queued so that
        clients relabel what they already received."""
        self.windows.merge_speakers(gone, keep)
        if gone in self._open:
            first = self._open.pop(gone)
            self._open[keep] = min(first, self._open.get(keep, first))
        self._history = sorted((end, start, keep if g == gone else g) for end, start, g in self._history)
        merge = wire.SpeakerMerge(self.channel, label_of(gone), label_of(keep), at)
        self._new_turns = [merge.relabel_turn(t) for t in self._new_turns]
        if gone in self._seen:
            self._seen.discard(gone)
            self._seen.add(keep)
        self._new_merges.append(merge)

    def _map_by_continuity(self, window: Window, scores: np.ndarray, active: list[int],
                           mapping: dict[int, int]) -> None:
        """Map active local speakers without a global speaker by their overlap with the previous window's mapped
        activity on the frames both windows cover: intersection over union ≥ ``continuity_threshold``, with a
        one-to-one assignment over the still free global speakers."""
        previous = self._previous
        rest = [k for k in active if k not in mapping]
        if not rest or previous is None:
            return
        prev_window, prev_mapped = previous
        if self.tracker.merged:  # what a merged speaker was heard saying now belongs to the speaker it became
            width = max(prev_mapped.shape[1], self.tracker.n_speakers)
            prev_mapped = np.pad(prev_mapped, ((0, 0), (0, width - prev_mapped.shape[1])))
            for gone in self.tracker.merged:
                if gone < prev_mapped.shape[1]:
                    keep = self.tracker.live(gone)
                    prev_mapped[:, keep] = np.maximum(prev_mapped[:, keep], prev_mapped[:, gone])
                    prev_mapped[:, gone] = 0.0
        free = [g for g in range(prev_mapped.shape[1]) if g not in mapping.values()]
        n_frames, tau = len(scores), self.options.tau_active
        index = self.windows.global_index(window) + np.arange(n_frames)
        prev_frames = index - self.windows.global_index(prev_window)
        shared = ((prev_frames >= 0) & (prev_frames < len(prev_mapped))
                  & self.windows.valid_frames(window, n_frames))
        if not free or not shared.any():
            return
        local = scores[shared][:, rest] > tau                           # (shared frames, rest)
        past = prev_mapped[prev_frames[shared]][:, free] > tau          # (shared frames, free)
        inter = local.T.astype(np.int64) @ past.astype(np.int64)
        union = local.sum(axis=0)[:, None] + past.sum(axis=0)[None, :] - inter
        iou = inter / np.maximum(union, 1)
        for r, c in zip(*linear_sum_assignment(-iou)):
            if iou[r, c] >= self.options.continuity_threshold:
                mapping[rest[r]] = free[c]

    def _finalize(self, until: int, last: bool = False) -> None:
        """Make frames before ``until`` (all frames when ``last``) final and turn them into turns."""
        windows = self.windows
        if windows.geometry is None:
            if last:
                self.final_until = max(self.final_until, self._audio_end)
            return
        start = windows.frozen if windows.frozen is not None else windows.covered[0]
        stop = max(start, windows.covered[1] if last else windows.frame_at(until))
        if stop == start and not last:
            return
        active = self._binarize(start, stop)
        turns: list[tuple[int, int, int]] = []
        for g in range(active.shape[1]):
            runs = _runs(active[:, g])
            carried = self._open.pop(g, None)
            if carried is not None and not (runs and runs[0][0] == 0):
                turns.append(self._turn(g, carried, start))
                carried = None
            for a, b in runs:
                first = carried if (a == 0 and carried is not None) else start + a
                if b == stop - start and not last:
                    self._open[g] = first
                else:
                    turns.append(self._turn(g, first, start + b))
        windows.freeze(stop)
        turns = sorted(t for t in turns if t[0] > t[1])
        self._seen.update(g for _, _, g in turns)
        self._history.extend(turns)
        self._new_turns.extend(wire.Turn(label_of(g), a, b, self.channel) for b, a, g in turns)
        self.final_until = max(self.final_until, self._audio_end if last else windows.frame_start(stop))
        if self.options.history is not None:
            horizon = bisect.bisect_left(self._history, (self.final_until - self.options.history,))
            del self._history[:horizon]
        if len(self._new_turns) > len(self._history):  # nobody pops them (speaker_turns off): same bound
            del self._new_turns[:len(self._new_turns) - len(self._history)]

    def _binarize(self, first: int, stop: int) -> np.ndarray:
        """Active global speakers in global frames ``[first, stop)`` (see ``DiarizationOptions.binarization``)."""
        activity = self.windows.activity(first, stop)
        if self.options.binarization == "threshold":
            return activity > self.options.tau_active
        return top_speakers(activity, self.windows.talkers(first, stop))

    def _turn(self, g: int, first: int, stop: int) -> tuple[int, int, int]:
        """``(end, start, g)`` of global speaker ``g``'s final run over global frames ``[first, stop)``."""
        start = max(0, self.windows.frame_start(first))
        end = self.windows.frame_start(stop)
        if self._finishing:
            end = min(end, self._audio_end)
        return (max(start, end), start, g)

    # ------------------------------------------------------------------------------------------------ output
    def pop_final_turns(self) -> list[wire.Turn]:
        """Turns finalised since the last call, ordered by end (unpopped ones are kept for ``options.history`` only)."""
        turns, self._new_turns = self._new_turns, []
        return turns

    def pop_merges(self) -> list[wire.SpeakerMerge]:
        """Speaker merges since the last call, in order (after one, no turn or label carries the merged label)."""
        merges, self._new_merges = self._new_merges, []
        return merges

    @property
    def speakers(self) -> tuple[str, ...]:
        """Labels that occur in final output so far, in label order."""
        return tuple(label_of(g) for g in sorted(self._seen))

    def speaker_for(self, start: int, end: int) -> Optional[str]:
        """The label with the largest overlap with ``[start, end)``: final turns before :attr:`final_until`,
        the provisional aggregate after it. When nobody was heard in the span, the largest overlap within
        ``NEAREST`` samples around it; ``None`` if still nobody."""
        end = max(end, start + 1)
        overlap = self._overlap(start, end)
        if not overlap:
            overlap = self._overlap(start - NEAREST, end + NEAREST)
        if not overlap:
            return None
        return label_of(max(overlap, key=lambda g: (overlap[g], -g)))

    def _overlap(self, start: int, end: int) -> dict[int, int]:
        out: dict[int, int] = {}

        def add(g: int, a: int, b: int) -> None:
            n = min(b, end) - max(a, start)
            if n > 0:
                out[g] = out.get(g, 0) + n

        for turn_end, turn_start, g in self._history[bisect.bisect_right(self._history, (start, 1 << 62)):]:
            add(g, turn_start, turn_end)
        windows = self.windows
        if windows.geometry is None:
            return out
        for g, first in self._open.items():
            add(g, windows.frame_start(first), self.final_until)
        if end > self.final_until:
            first = windows.frame_at(max(start, self.final_until))
            stop = windows.frame_at(end - 1) + 1
            active = self._binarize(first, stop)
            for g in range(active.shape[1]):
                for a, b in _runs(active[:, g]):
                    add(g, max(self.final_until, windows.frame_start(first + a)), windows.frame_start(first + b))
        return out

