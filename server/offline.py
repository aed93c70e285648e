"""Drive a :class:`~streaming.session.Session` synchronously, without sockets or batchers.

Used by tests and benchmarks with fake models (``tests/fakes.py``) or real adapters: :func:`drive_session` feeds
audio in chunks and, after each chunk, runs the session's work until it asks for nothing more, so every result is
back before the next audio arrives (an infinitely fast server). :func:`drive_diarizer` does the same for a lone
``StreamingDiarizer`` (DER evaluation). :func:`run_requests_by_kind` builds the ``run`` function from one batch
function per request type (``adapter.run_batch`` fits).

:func:`drive_whole` is the whole-file mode (``rechka-transcribe``): several sessions fed in large chunks side by
side, their requests batched together per model, and final decodes held back until a pool of them is waiting,
so GigaAM sees large batches of like-length rows. Results reach each session exactly as from a server (out
of order across kinds, in order per VAD chain), so the events are the live ones.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from streaming import wire
from streaming.config import SAMPLE_RATE
from streaming.diarization import StreamingDiarizer
from streaming.session import Session
from streaming.work import AsrRequest, Request, Result

Run = Callable[[list[Request]], list[Result]]
BatchFunction = Callable[[list[Request]], Sequence[Result]]


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


def _batch_rows(held: Sequence[Request], asr_batch: int, max_padded: int) -> int:
    """How many leading ``held`` requests form the next ASR batch: at most ``asr_batch``, and (beyond the first)
    rows × the longest row's samples at most ``max_padded`` (what the encoder holds for a padded batch)."""
    rows, longest = 0, 0
    for request in held[:asr_batch]:
        longest = max(longest, len(request.audio))  # type: ignore[attr-defined]
        if rows and (rows + 1) * longest > max_padded:
            break
        rows += 1
    return rows


def drive_whole(sessions: Sequence[Session], audios: Sequence[bytes], run: Run, chunk_bytes: int = 640_000,
                asr_batch: int = 32, asr_batch_seconds: float = 160.0,
                asr_pool: Optional[int] = None) -> list[list[wire.ServerEvent]]:
    """Feed each session its whole ``audio`` (``chunk_bytes`` per message, default 20 s of 16 kHz s16le), then stop
    it; batch every kind of request across all sessions. Final ASR requests are held until ``asr_pool`` of them
    (default ``4 × asr_batch``) wait, or the audio has ended; then the longest go first, ``asr_batch`` at a time,
    fewer when the padded batch (rows × longest row) would exceed ``asr_batch_seconds`` of audio (memory: a
    30-minute file's batches of 32 long finals took the process past 18 GB). Rows of like length waste little on
    padding (in arrival order it was about half of the encoder's work); each session still emits its finals in
    order (:mod:`streaming.transcript`). Returns each session's events. ``chunk_bytes`` must stay under the
    sessions' ``max_pending_audio``."""
    pool = 4 * asr_batch if asr_pool is None else asr_pool
    if chunk_bytes <= 0 or asr_batch < 1 or asr_batch_seconds <= 0 or pool < 1:
        raise ValueError("chunk_bytes and asr_batch_seconds must be positive, asr_batch and asr_pool >= 1")
    max_padded = int(asr_batch_seconds * SAMPLE_RATE)
    events: list[list[wire.ServerEvent]] = [[] for _ in sessions]
    owner: dict[int, int] = {}  # id(request) → session index
    held: list[Request] = []  # ASR requests waiting for a full pool

    def settle(final: bool) -> None:
        nonlocal held
        for _ in range(1_000_000):
            work: list[Request] = []
            for i, session in enumerate(sessions):
                for request in session.work_to_run():
                    owner[id(request)] = i
                    (held if isinstance(request, AsrRequest) else work).append(request)
                events[i] += session.events_to_send()
            if not work:
                if not held or (len(held) < pool and not final):
                    return  # nothing to run, or the pool is not full yet
                held.sort(key=lambda r: len(r.audio), reverse=True)  # type: ignore[attr-defined]
                rows = _batch_rows(held, asr_batch, max_padded)
                work, held = held[:rows], held[rows:]
            for request, result in zip(work, run(work)):
                sessions[owner.pop(id(request))].receive_result(result)
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
    return events
