"""Drive a :class:`~streaming.session.Session` synchronously, without sockets or batchers.

Used by tests and benchmarks with fake models (``tests/fakes.py``) or real adapters: :func:`drive_session` feeds
audio in chunks and, after each chunk, runs the session's work until it asks for nothing more, so every result is
back before the next audio arrives (an infinitely fast server). :func:`drive_diarizer` does the same for a lone
``StreamingDiarizer`` (DER evaluation). :func:`run_requests_by_kind` builds the ``run`` function from one batch
function per request type (``adapter.run_batch`` fits).

:func:`drive_whole` is the whole-file mode (``rechka-transcribe``): several sessions fed in large chunks side by
side, their requests batched together per model, and final decodes held back until a pool of them is waiting,
so GigaAM sees large batches of like-length rows. Results reach each session exactly as from a server (out
of order across kinds, in order per VAD chain), so the events are the live ones; with ``overlap`` the models run
side by side in threads with the same batches (:class:`_Overlapped`).
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from streaming import wire
from streaming.config import SAMPLE_RATE
from streaming.diarization import StreamingDiarizer
from streaming.session import Session
from streaming.work import AsrRequest, Request, Result, VadRequest

Run = Callable[[list[Request]], list[Result]]
BatchFunction = Callable[[list[Request]], Sequence[Result]]

BYTES_PER_SAMPLE = 2  # the whole-file drivers feed 16 kHz s16le
# Seconds of audio the overlapped whole-file driver may feed ahead of the diarization results: the windows it has
# cut wait with their audio (5 s windows every second hold 5x the audio: 300 s is ~100 MB of float32), and the
# further the VAD runs ahead, the sooner GigaAM has finals to decode beside diarization.
DIARIZATION_LEAD = 300.0


def run_requests_by_kind(models: Mapping[type, BatchFunction]) -> Run:
    """A ``run`` that hands each request type's requests, as one batch, to ``models[type]``; results keep the
    requests' order. A request type without a model raises ``KeyError`` naming it."""

    def run(requests: list[Request]) -> list[Result]:
        groups: dict[type, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(type(request), []).append(i)
        results: list[Optional[Result]] = [None] * len(requests)
        for kind, indices in groups.items():
            model = models.get(kind)
            if model is None:
                raise KeyError(f"no model for {kind.__name__}; pass one in run_requests_by_kind(models)")
            outputs = list(model([requests[i] for i in indices]))
            if len(outputs) != len(indices):
                raise ValueError(f"the {kind.__name__} model returned {len(outputs)} results for {len(indices)}")
            for i, output in zip(indices, outputs):
                results[i] = output
        return [r for r in results if r is not None]

    return run


def pump(session: Session, run: Run, max_rounds: int = 100_000) -> list[wire.ServerEvent]:
    """Run the session's work (and the work its results cause) until there is none; return the events."""
    events: list[wire.ServerEvent] = []
    for _ in range(max_rounds):
        work = session.work_to_run()
        events += session.events_to_send()
        if not work:
            return events
        for result in run(work):
            session.receive_result(result)
    raise RuntimeError(f"the session still asked for work after {max_rounds} rounds")


def drive_session(session: Session, run: Run, audio: bytes = b"", chunk_bytes: int = 3200, end: bool = True,
                  on_chunk: Optional[Callable[[int, list[wire.ServerEvent]], None]] = None) -> list[wire.ServerEvent]:
    """Feed ``audio`` in ``chunk_bytes`` messages, pumping after each; then (``end``) stop and pump until closed.

    ``on_chunk(bytes_sent, events)`` is called after each chunk with the events it produced. Returns all events.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    events: list[wire.ServerEvent] = []
    for offset in range(0, len(audio), chunk_bytes):
        session.receive_audio(audio[offset:offset + chunk_bytes])
        new = pump(session, run)
        if on_chunk is not None:
            on_chunk(min(offset + chunk_bytes, len(audio)), new)
        events += new
    if end:
        session.receive_end()
        events += pump(session, run)
    return events


def drive_diarizer(diarizer: StreamingDiarizer, buffer: Any, audio: np.ndarray, run: Run, chunk: int = 16_000,
                   merges: Optional[list[wire.SpeakerMerge]] = None) -> list[wire.Turn]:
    """Feed float32 ``audio`` into ``buffer`` (an ``AudioBuffer``-like object) in ``chunk``-sample pieces, answering
    the diarizer's requests at once after each; finish the stream and return every final turn, with the speaker
    merges applied as a client applies them (a turn of a merged label bears the label it was merged into). With
    ``merges`` (a list), the merges are appended to it instead and the turns are returned as popped."""
    pop_merges = getattr(diarizer, "pop_merges", list)  # der.py --baseline runs diarizers from before merges

    def settle(pending: list[Request]) -> None:
        while pending:
            pending = [r for result in run(pending) for r in diarizer.on_result(result, buffer)]

    turns: list[wire.Turn] = []

    def collect() -> None:
        for merge in pop_merges():
            if merges is not None:
                merges.append(merge)
            else:
                turns[:] = [merge.relabel_turn(t) for t in turns]
        turns.extend(diarizer.pop_final_turns())

    for a in range(0, len(audio), chunk):
        buffer.append(audio[a:a + chunk])
        settle(diarizer.on_audio(buffer))
        buffer.discard_before(diarizer.oldest_needed)
        collect()
    settle(diarizer.finish(buffer))
    collect()
    return turns


class _AsrPool:
    """Final ASR requests held until ``pool`` of them wait (or the audio has ended), then cut longest first into
    batches of at most ``asr_batch`` rows and, beyond the first row, ``max_padded`` samples of padded audio (rows ×
    the longest row: what the encoder holds for a padded batch). The same held requests give the same batches."""

    def __init__(self, asr_batch: int, max_padded: int, pool: int) -> None:
        self.asr_batch, self.max_padded, self.pool = asr_batch, max_padded, pool
        self.held: list[Request] = []

    def next_batch(self, final: bool) -> list[Request]:
        """The next batch to decode, or ``[]`` while fewer than ``pool`` wait and more audio may come."""
        if not self.held or (len(self.held) < self.pool and not final):
            return []
        self.held.sort(key=lambda r: len(r.audio), reverse=True)  # type: ignore[attr-defined]
        rows, longest = 0, 0
        for request in self.held[:self.asr_batch]:
            longest = max(longest, len(request.audio))  # type: ignore[attr-defined]
            if rows and (rows + 1) * longest > self.max_padded:
                break
            rows += 1
        batch, self.held = self.held[:rows], self.held[rows:]
        return batch


def drive_whole(sessions: Sequence[Session], audios: Sequence[bytes], run: Run, chunk_bytes: int = 640_000,
                asr_batch: int = 32, asr_batch_seconds: float = 160.0, asr_pool: Optional[int] = None,
                overlap: bool = False, diarization_lead: float = DIARIZATION_LEAD,
                asr_lanes: int = 1) -> list[list[wire.ServerEvent]]:
    """Feed each session its whole ``audio`` (``chunk_bytes`` per message, default 20 s of 16 kHz s16le), then stop
    it; batch every kind of request across all sessions. Final ASR requests are held until ``asr_pool`` of them
    (default ``4 × asr_batch``) wait, or the audio has ended; then the longest go first, ``asr_batch`` at a time,
    fewer when the padded batch (rows × longest row) would exceed ``asr_batch_seconds`` of audio (memory: a
    30-minute file's batches of 32 long finals took the process past 18 GB). Rows of like length waste little on
    padding (in arrival order it was about half of the encoder's work). The decoded finals reach the sessions once
    the audio has ended and diarization is done, in the order they were decoded, so every final is labelled by the
    finished diarization (each session still emits its finals in order, :mod:`streaming.transcript`; keep every
    turn for them: ``DiarizationOptions.history=None``). Returns each session's events. ``chunk_bytes`` must stay
    under the sessions' ``max_pending_audio``.

    ``overlap``: run the models side by side (:class:`_Overlapped`): GigaAM's batches in ``asr_lanes`` threads
    (that many batches at once), diarization's in another, the VAD in the caller's; the audio runs at most
    ``diarization_lead`` seconds ahead of the diarization results (their windows hold their audio until then). Every model gets exactly the batches it gets
    without ``overlap`` and the finals come at the same point, so each kind of event is the same; only how events
    of different kinds interleave differs."""
    pool = 4 * asr_batch if asr_pool is None else asr_pool
    if chunk_bytes <= 0 or asr_batch < 1 or asr_batch_seconds <= 0 or pool < 1 or diarization_lead < 0 or asr_lanes < 1:
        raise ValueError("chunk_bytes and asr_batch_seconds must be positive, asr_batch, asr_pool and asr_lanes "
                         ">= 1, diarization_lead >= 0")
    finals = _AsrPool(asr_batch, int(asr_batch_seconds * SAMPLE_RATE), pool)
    if overlap:
        lead_chunks = max(1, math.ceil(diarization_lead * SAMPLE_RATE * BYTES_PER_SAMPLE / chunk_bytes))
        return _Overlapped(sessions, run, finals, lead_chunks, asr_lanes).drive(audios, chunk_bytes)
    events: list[list[wire.ServerEvent]] = [[] for _ in sessions]
    owner: dict[int, int] = {}  # id(request) → session index
    decoded: list[tuple[int, Result]] = []  # (session index, final ASR result), handed over at the end

    def settle(final: bool) -> None:
        for _ in range(1_000_000):
            work: list[Request] = []
            for i, session in enumerate(sessions):
                for request in session.work_to_run():
                    owner[id(request)] = i
                    (finals.held if isinstance(request, AsrRequest) else work).append(request)
                events[i] += session.events_to_send()
            if work:
                for request, result in zip(work, run(work)):
                    sessions[owner.pop(id(request))].receive_result(result)
            elif batch := finals.next_batch(final):
                decoded.extend((owner.pop(id(request)), result) for request, result in zip(batch, run(batch)))
            else:
                return  # nothing to run, or the pool is not full yet
        raise RuntimeError("the sessions still asked for work after 1e6 rounds")

    longest = max((len(a) for a in audios), default=0)
    for offset in range(0, longest, chunk_bytes):
        for session, audio in zip(sessions, audios):
            if offset < len(audio):
                session.receive_audio(audio[offset:offset + chunk_bytes])
        settle(final=False)
    for session in sessions:
        session.receive_end()
    settle(final=True)
    for i, result in decoded:
        sessions[i].receive_result(result)
    settle(final=True)
    return events


class _Overlapped:
    """:func:`drive_whole` with the models side by side: the VAD runs in the caller's thread as the audio is fed
    (cheap, and it makes the finals), segmentation and embeddings in a diarization thread, GigaAM in an ASR thread
    (torch and ONNX Runtime release the GIL while they compute); only the caller's thread touches the sessions.

    The batches are the sequential driver's: requests are collected after every action, so a batch holds exactly
    the requests one action made (the windows a chunk of audio made due, the embeddings of one segmentation batch,
    the VAD requests of one round); final ASR requests join the pool only from the VAD, which runs to completion
    after each chunk, before the pool is cut as the sequential driver cuts it; and diarization's results make no
    VAD or ASR requests. The decoded finals are handed over at the end in the order they were cut, as there."""

    def __init__(self, sessions: Sequence[Session], run: Run, finals: _AsrPool, lead_chunks: int,
                 asr_lanes: int = 1) -> None:
        self.sessions, self.run, self.finals, self.lead_chunks = sessions, run, finals, lead_chunks
        self.events: list[list[wire.ServerEvent]] = [[] for _ in sessions]
        self.owner: dict[int, int] = {}  # id(request) → session index
        self.vad: list[Request] = []
        self.diarizing: deque[tuple[Future, list[Request], int]] = deque()  # oldest first, with the chunk it is for
        self.decoding: list[tuple[Future, list[int]]] = []  # ASR batches in the order cut, their session indices
        self.threads = {lane: ThreadPoolExecutor(n, thread_name_prefix=f"rechka-{lane}")
                        for lane, n in (("diar", 1), ("asr", asr_lanes))}
        self.chunk, self.ended = 0, False  # chunks fed so far; whether the sessions were stopped

    def drive(self, audios: Sequence[bytes], chunk_bytes: int) -> list[list[wire.ServerEvent]]:
        try:
            longest = max((len(a) for a in audios), default=0)
            for offset in range(0, longest, chunk_bytes):
                while self.diarizing and self.diarizing[0][2] <= self.chunk - self.lead_chunks:
                    self._diarized(block=True)  # the audio is far enough ahead of diarization
                for session, audio in zip(self.sessions, audios):
                    if offset < len(audio):
                        session.receive_audio(audio[offset:offset + chunk_bytes])
                self.chunk += 1
                self._step(self.chunk)
                self._diarized(block=False)
            for session in self.sessions:
                session.receive_end()
            self.chunk, self.ended = self.chunk + 1, True
            self._step(self.chunk)
            while self.diarizing:
                self._diarized(block=True)
            for future, owners in self.decoding:
                for i, result in zip(owners, future.result()):
                    self.sessions[i].receive_result(result)
            self._step(self.chunk)
            return self.events
        finally:
            for pool in self.threads.values():
                pool.shutdown(wait=True, cancel_futures=True)

    def _step(self, chunk: int) -> None:
        """Route the sessions' new requests (VAD to the caller's queue, finals to the pool, the rest to the
        diarization thread as one batch for ``chunk``) and take their events; run the VAD until it has nothing left;
        cut the ASR pool (all of it once the audio has ended)."""
        while True:
            diarization: list[Request] = []
            for i, session in enumerate(self.sessions):
                for request in session.work_to_run():
                    self.owner[id(request)] = i
                    if isinstance(request, VadRequest):
                        self.vad.append(request)
                    elif isinstance(request, AsrRequest):
                        self.finals.held.append(request)
                    else:
                        diarization.append(request)
                self.events[i] += session.events_to_send()
            if diarization:
                self.diarizing.append((self.threads["diar"].submit(self.run, diarization), diarization, chunk))
            if not self.vad:
                break
            batch, self.vad = self.vad, []
            self._hand(batch, self.run(batch))
        while batch := self.finals.next_batch(self.ended):
            owners = [self.owner.pop(id(request)) for request in batch]
            self.decoding.append((self.threads["asr"].submit(self.run, batch), owners))

    def _hand(self, batch: list[Request], results: list[Result]) -> None:
        for request, result in zip(batch, results):
            self.sessions[self.owner.pop(id(request))].receive_result(result)

    def _diarized(self, block: bool) -> None:
        """Hand over the finished diarization batches, oldest first (waiting for the oldest with ``block``); raise
        a failed GigaAM batch's error now rather than at the end."""
        if block and self.diarizing:
            wait([self.diarizing[0][0]])
        while self.diarizing and self.diarizing[0][0].done():
            future, batch, chunk = self.diarizing.popleft()
            self._hand(batch, future.result())
            self._step(chunk)
        for future, _ in self.decoding:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
