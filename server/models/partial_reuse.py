"""resemblyzer's 1.6 s partials computed once per stream: consecutive diarization windows overlap (5 s windows every
0.5 s), so the tracker asks for each second of speech about five times (a local speaker's segment in every window
that holds it, cut differently by each window's edges), and resemblyzer's cost is its LSTM over every partial of
every request.

Here a request that says where its audio lies in the stream (``EmbeddingRequest.spans``, absolute samples) is
embedded from partials on one grid of the stream (every ``grid`` samples, resemblyzer's 1.3 partials per second,
counted from the stream's sample 0) instead of partials counted from its own first sample: a partial starting at
grid point ``g`` holds the request's samples on ``[g, g + 1.6 s)`` where its spans cover them and zeros elsewhere
(so a pause or another speaker's overlap inside a segment is silence, not cut out), raised to resemblyzer's -30 dBFS
by its own speech's level. The grid points whose partial the request covers for at least ``coverage`` (0.75:
resemblyzer's rule for its last partial) are the request's partials; its embedding is their mean, L2-normalised, as
``embed_utterance`` averages its own. A partial is reused when the stream's earlier request covered the same grid
point on the same samples except for at most ``tolerance`` of them (50 ms: windows cut a segment's edges a frame
or two apart) and the samples both hold are equal (compared: another file under the same session id, or a buffer
that lost audio, recomputes). Requests with no such partial (segments under ~1.2 s or scattered) and requests
without spans are left to the caller (``embed_utterance``'s layout, repeated up to 1.6 s).

Off by default (``ResemblyzerEmbedding(reuse_partials=True)`` turns it on; docs/benchmarks.md, "Each second of
speech embedded once"): it cuts the partials the default pair computes 2.3-fold (6.12 → 2.65 per stream-second on
``sample.wav`` and the AMI files), the reuse itself changes no DER digit (tolerance 0 and 50 ms score alike), but the
grid layout does: AMI and the composed conversations within .004 DER, ``sample.wav`` .145 → .277 at 1.5 s.
``edge_only`` (``reuse_partials="edge"``): only requests whose speech starts at their window's first frame
(``EmbeddingRequest.window_edge``: the window cut it, so its start moves with the window and partials counted from it
never line up) take the grid, the others keep ``embed_utterance``'s layout: 3.47 partials per stream-second, DER on
the sample, AMI and composed sets within noise (.002).

Memory: per stream the last ``horizon`` samples it was asked about (float32 and a mask) and the partials on them
(a mask and a 256-float embedding each, a few per grid point), for at most ``streams`` streams (least recently used
dropped first). Not thread-safe: one batcher thread calls it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from streaming.work import EmbeddingRequest

PARTIAL = 25_600  # 1.6 s: resemblyzer's 160 mel frames of 10 ms
GRID = 12_320  # 77 mel hops: resemblyzer's partial every 1 / 1.3 s
_VARIANTS = 8  # partials kept per grid point (different masks)


@dataclass(eq=False)
class _Partial:
    mask: np.ndarray  # (PARTIAL,) bool: the samples of [g, g + PARTIAL) it holds
    embedding: Optional[np.ndarray] = None  # None while its batch is being encoded


@dataclass(eq=False)
class _Stream:
    base: int = 0  # absolute sample of audio[0]
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    partials: dict[int, list[_Partial]] = field(default_factory=dict)  # grid point → its variants


class PartialReuse:
    """Embeddings of requests from grid partials, reused per stream.

    ``encode(batch)``: ``(N, PARTIAL)`` float32 partial audio → ``(N, D)`` unit embeddings; ``gain(samples)``: the
    factor that raises a partial's speech to the model's level (1.0 to leave it).
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], gain: Callable[[np.ndarray], float], *,
                 grid: int = GRID, partial: int = PARTIAL, coverage: float = 0.75, tolerance: int = 800,
                 horizon: int = 30 * 16_000, streams: int = 32, edge_only: bool = False) -> None:
        if not (0 < grid <= partial and 0.0 < coverage <= 1.0 and tolerance >= 0 and horizon >= 2 * partial
                and streams >= 1):
            raise ValueError("PartialReuse needs 0 < grid <= partial, coverage in (0, 1], tolerance >= 0, "
                             "horizon >= 2 partials and streams >= 1")
        self.encode, self.gain = encode, gain
        self.grid, self.partial, self.coverage, self.tolerance = grid, partial, coverage, tolerance
        self.horizon, self.streams, self.edge_only = horizon, streams, edge_only
        self._streams: OrderedDict[tuple[str, int], _Stream] = OrderedDict()
        self.partials_reused = 0
        self.partials_computed = 0

    def embed(self, requests: Sequence[EmbeddingRequest], audios: Sequence[np.ndarray]) -> list[Optional[np.ndarray]]:
        """Each request's embedding, or ``None`` for a request left to the caller (no spans, spans that do not
        add up to its audio, or no grid partial it covers enough). Requests go in order, so a stream's later
        request in the same batch reuses its earlier one's partials."""
        plans: list[Optional[list[_Partial]]] = []
        fresh: list[tuple[_Partial, np.ndarray]] = []
        for request, audio in zip(requests, audios):
            plans.append(self._plan(request, audio, fresh))
        if fresh:
            encoded = self.encode(np.stack([x for _, x in fresh]))
            for (partial, _), vector in zip(fresh, encoded):
                partial.embedding = np.asarray(vector, np.float32)
        out: list[Optional[np.ndarray]] = []
        for plan in plans:
            if not plan:
                out.append(None)
                continue
            mean = np.mean([p.embedding for p in plan], axis=0)
            out.append((mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32))
        return out

    def _plan(self, request: EmbeddingRequest, audio: np.ndarray,
              fresh: list[tuple[_Partial, np.ndarray]]) -> Optional[list[_Partial]]:
        spans = request.spans
        if not spans or sum(b - a for a, b in spans) != len(audio) or any(b <= a for a, b in spans):
            return None
        if self.edge_only and not request.window_edge:
            return None
        first, last = spans[0][0], spans[-1][1]
        if first < 0 or any(a < b0 for (_, b0), (a, _) in zip(spans[:-1], spans[1:])):
            return None
        points = range(first // self.grid * self.grid, last, self.grid)
        chosen = [g for g in points if self._covered(spans, g) >= self.coverage * self.partial]
        if not chosen:
            return None
        stream = self._stream(request, spans, audio)
        plan = []
        for g in chosen:
            mask, samples = self._cut(spans, audio, g)
            partial = self._match(stream, g, mask)
            if partial is None:
                partial = _Partial(mask)
                variants = stream.partials.setdefault(g, [])
                variants.append(partial)
                del variants[:-_VARIANTS]
                speech = samples[mask]
                fresh.append((partial, samples * np.float32(self.gain(speech))))
                self.partials_computed += 1
            else:
                self.partials_reused += 1
            plan.append(partial)
        return plan

    def _covered(self, spans: tuple[tuple[int, int], ...], g: int) -> int:
        return sum(max(0, min(b, g + self.partial) - max(a, g)) for a, b in spans)

    def _cut(self, spans: tuple[tuple[int, int], ...], audio: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
        """The partial at ``g``: its mask and samples (zero where the spans do not cover it)."""
        mask = np.zeros(self.partial, bool)
        samples = np.zeros(self.partial, np.float32)
        offset = 0
        for a, b in spans:
            lo, hi = max(a, g), min(b, g + self.partial)
            if hi > lo:
                mask[lo - g:hi - g] = True
                samples[lo - g:hi - g] = audio[offset + lo - a:offset + hi - a]
            offset += b - a
        return mask, samples

    def _match(self, stream: _Stream, g: int, mask: np.ndarray) -> Optional[_Partial]:
        """The kept partial at ``g`` nearest to ``mask``, when at most ``tolerance`` samples differ."""
        best, fewest = None, self.tolerance + 1
        for partial in stream.partials.get(g, []):
            differ = int(np.count_nonzero(partial.mask ^ mask))
            if differ < fewest:
                best, fewest = partial, differ
        return best

    def _stream(self, request: EmbeddingRequest, spans: tuple[tuple[int, int], ...], audio: np.ndarray) -> _Stream:
        """The request's stream with its samples recorded; a stream whose recorded samples differ from the
        request's (or that it reaches before) starts over."""
        key = (request.session_id, request.channel)
        stream = self._streams.get(key)
        first, last = spans[0][0], spans[-1][1]
        if stream is None or first < stream.base or not self._agrees(stream, spans, audio):
            stream = _Stream(base=first // self.grid * self.grid)
        end = stream.base + len(stream.audio)
        if last > end:
            stream.audio = np.concatenate([stream.audio, np.zeros(last - end, np.float32)])
            stream.known = np.concatenate([stream.known, np.zeros(last - end, bool)])
        offset = 0
        for a, b in spans:
            stream.audio[a - stream.base:b - stream.base] = audio[offset:offset + b - a]
            stream.known[a - stream.base:b - stream.base] = True
            offset += b - a
        cut = (len(stream.audio) - self.horizon) // self.grid * self.grid
        if cut > 0:
            stream.audio, stream.known, stream.base = stream.audio[cut:], stream.known[cut:], stream.base + cut
            stream.partials = {g: v for g, v in stream.partials.items() if g >= stream.base}
        self._streams[key] = stream
        self._streams.move_to_end(key)
        while len(self._streams) > self.streams:
            self._streams.popitem(last=False)
        return stream

    @staticmethod
    def _agrees(stream: _Stream, spans: tuple[tuple[int, int], ...], audio: np.ndarray) -> bool:
        offset, end = 0, stream.base + len(stream.audio)
        for a, b in spans:
            lo, hi = a, min(b, end)
            if hi > lo:
                known = stream.known[lo - stream.base:hi - stream.base]
                if not np.array_equal(stream.audio[lo - stream.base:hi - stream.base][known],
                                      audio[offset:offset + hi - lo][known]):
                    return False
            offset += b - a
        return True
