"""Cached partials' store: one chunked encoder per stream channel (``PartialOptions.cached_context``).

:class:`PartialCaches` is the adapter's store: one encoder per ``(session, channel)`` (the open utterance's; a
partial of another utterance replaces it), dropped at a final request of its utterance (a speculative one
included: a later partial then starts a new cache) and, least recently used first, beyond ``max_caches``. A cached
partial's result is the greedy CTC decode of every frame of the utterance so far: its words start before the
request's audio (negative offsets). Memory: every earlier frame's keys and values per layer (full-size GigaAM
~2.5 MB per second of utterance in float32).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np

from server.models.asr_cache import ChunkedEncoder
from streaming.work import AsrKind, AsrRequest, AsrResult, Word


def ctc_tokens(row: np.ndarray, blank: int) -> list[tuple[int, int, int]]:
    """(token, first frame, last frame) for each run of one non-blank label of greedy CTC ``row``."""
    if len(row) == 0:
        return []
    starts = np.flatnonzero(np.diff(row, prepend=-1))
    ends = np.append(starts[1:], len(row)) - 1
    return [(int(row[s]), int(s), int(e)) for s, e in zip(starts, ends) if row[s] != blank]


class _Utterance:
    def __init__(self, encoder: Any, utterance_id: int, start: int) -> None:
        self.encoder = encoder
        self.utterance_id = utterance_id
        self.start = start  # absolute sample of the first cached sample
        self.end = start  # absolute end of the audio pushed so far
        self.labels = np.zeros(0, dtype=np.int64)  # greedy CTC labels of the committed frames
        self.tokens: list[tuple[int, int, int]] = []  # RNNT: tokens of the committed frames
        self.decoder_state: Any = None  # RNNT: the prediction network's state after them


class PartialCaches:
    """Cached partial decodes of a :class:`~server.models.asr.GigaAmAsr` (CTC: greedy labels of every frame; RNNT:
    greedy decoding continued from the committed frames' prediction-network state), one encoder per ``(session,
    channel)``, made by the adapter's ``chunk_encoder(lookahead)`` (torch: :class:`ChunkedEncoder`; ONNX Runtime:
    :class:`~server.models.asr_cache_onnx.OnnxChunkedEncoder`). Thread-safe (the finals' and the partials' lanes share the adapter).

    ``restarts``: partials that did not continue their utterance's cached audio and started a new cache (no left
    context); ``hide``: the newest frames' labels left out of the text (a measurement knob; 0 in the server).
    """

    def __init__(self, asr: Any, max_caches: int = 256, hide: int = 0) -> None:
        self.asr, self.max_caches, self.hide = asr, max_caches, hide
        self._caches: OrderedDict[tuple[str, int], _Utterance] = OrderedDict()
        self._lock = threading.Lock()
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._caches)

    def finished(self, request: AsrRequest) -> Optional[ChunkedEncoder]:
        """A final request of an utterance: its cache is dropped (returned, for its counters)."""
        key = (request.session_id, request.channel)
        with self._lock:
            utt = self._caches.get(key)
            if utt is None or utt.utterance_id != request.utterance_id:
                return None
            del self._caches[key]
        return utt.encoder

    def decode(self, request: AsrRequest, lookahead: int = 0) -> AsrResult:
        """The utterance so far, its new audio (``request.audio``) encoded against the cache."""
        return self.decode_batch([request], [lookahead])[0]

    def decode_batch(self, requests: Sequence[AsrRequest], lookaheads: Sequence[int]) -> list[AsrResult]:
        """:meth:`decode` of several partial requests, their encoders stepped together, at most the adapter's
        ``chunk_rows`` per ``step_many`` (ONNX engine: rows of one chunk-graph run); two requests of one stream
        channel in a batch are stepped in turn."""
        results: list[Optional[AsrResult]] = [None] * len(requests)
        pending = list(range(len(requests)))
        while pending:
            keys, now, later = set(), [], []
            for i in pending:
                key = (requests[i].session_id, requests[i].channel)
                (later if key in keys else now).append(i)
                keys.add(key)
            utterances = [self._take(requests[i], lookaheads[i]) for i in now]
            committed = [u.encoder.frames_out for u in utterances]
            encoders = [u.encoder for u in utterances]
            outs: list[Optional[np.ndarray]] = [None] * len(now)
            rows = max(int(getattr(self.asr, "chunk_rows", 1)), 1)
            for kind in {type(e) for e in encoders}:  # one engine in practice
                same = [j for j, e in enumerate(encoders) if type(e) is kind]
                for g in range(0, len(same), rows):
                    picked = same[g:g + rows]
                    stepped = kind.step_many([encoders[j] for j in picked],
                                             [np.asarray(requests[now[j]].audio, dtype=np.float32) for j in picked],
                                             [False] * len(picked))
                    for j, out in zip(picked, stepped):
                        outs[j] = out
            for j, i in enumerate(now):
                results[i] = self._result(requests[i], utterances[j], outs[j], committed[j])
            pending = later
        return results  # type: ignore[return-value]

    def _take(self, request: AsrRequest, lookahead: int) -> _Utterance:
        """The request's utterance cache (a new one unless the request continues the cached audio), marked most
        recently used; the least recently used beyond ``max_caches`` are dropped."""
        assert request.kind == AsrKind.PARTIAL
        key = (request.session_id, request.channel)
        with self._lock:
            utt = self._caches.pop(key, None)
            if utt is None or utt.utterance_id != request.utterance_id or utt.end != request.start:
                self.restarts += utt is not None and utt.utterance_id == request.utterance_id
                utt = _Utterance(self.asr.chunk_encoder(lookahead), request.utterance_id, request.start)
            self._caches[key] = utt  # most recently used last
            while len(self._caches) > self.max_caches:
                self._caches.popitem(last=False)
        utt.encoder.lookahead = lookahead  # per window: the policy grants lookahead while its budget pays for it
        return utt

    def _result(self, request: AsrRequest, utt: _Utterance, out: np.ndarray, committed: int) -> AsrResult:
        utt.end = request.start + len(request.audio)
        new = utt.encoder.frames_out - committed
        if self.asr.head_kind == "ctc":  # out: log-probs
            labels = out.argmax(-1).astype(np.int64) if len(out) else np.zeros(0, dtype=np.int64)
            utt.labels = np.concatenate([utt.labels, labels[:new]])
            row = np.concatenate([utt.labels, labels[new:]])
            row = row[: max(len(row) - self.hide, 0)]
            tokens = ctc_tokens(row, self.asr.blank_id)
        else:  # RNNT, out: encoder frames; greedy decoding continues from the committed frames' decoder state
            done, utt.decoder_state = self.asr.rnnt_continue(out[:new], utt.decoder_state, committed)
            utt.tokens += done
            ahead, _ = self.asr.rnnt_continue(out[new:], utt.decoder_state, committed + new)
            tokens = utt.tokens + ahead
        text, words = self.asr.words.build(tokens, utt.end - utt.start)
        shift = utt.start - request.start  # the words are the utterance's; the request's audio starts later
        return AsrResult(session_id=request.session_id, seq=request.seq, text=text,
                         words=tuple(Word(w.text, w.start + shift, w.end + shift) for w in words),
                         whole_utterance=True)
