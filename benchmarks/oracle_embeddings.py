"""Oracle speaker embeddings: what the streaming diarizer would do if its embedding model were perfect.

An oracle embedding of some audio is the share of that audio each *reference* speaker speaks (one dimension per
reference speaker, plus one for audio in which the reference has nobody), unit-normalised. It is exact on any
length of speech, and an embedding of a mixture of voices is that mixture's proportions: the best any embedding model
could do on the same segments. Everything else — the segmentation model, the windows, which frames get embedded, the
tracker, the aggregation — is rechka's own, so the errors left with oracle embeddings belong to the segmentation model
and the pipeline, not to the embedding model. ``benchmarks/der.py --systems oracle`` reports them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from streaming.config import SAMPLE_RATE
from streaming.work import EmbeddingRequest, EmbeddingResult, Request, Result


class OracleEmbeddings:
    """A request runner: embedding requests get oracle vectors from ``reference`` (a pyannote ``Annotation``);
    every other request goes to ``run``, in one batch, and results come back in request order."""

    def __init__(self, reference: Any, run: Callable[[list[Request]], list[Result]]) -> None:
        self.labels = sorted(reference.labels())
        self.turns = [np.array([(round(s.start * SAMPLE_RATE), round(s.end * SAMPLE_RATE))
                                for s in reference.label_timeline(label)], dtype=np.int64).reshape(-1, 2)
                      for label in self.labels]
        self._run = run

    def vector(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Unit vector of each reference speaker's speech within ``spans`` (absolute samples); the last dimension
        holds the samples in which the reference has nobody (when no speaker is active at all, it alone is 1)."""
        shares = np.zeros(len(self.labels) + 1)
        covered = 0
        for a, b in spans:
            covered += max(0, b - a)
            for j, turns in enumerate(self.turns):
                shares[j] += np.clip(np.minimum(turns[:, 1], b) - np.maximum(turns[:, 0], a), 0, None).sum()
        shares[-1] = max(0.0, covered - shares[:-1].sum())  # speakers may overlap: then nobody's share is 0
        if not shares.any():
            shares[-1] = 1.0
        return shares / np.linalg.norm(shares)

    def __call__(self, requests: list[Request]) -> list[Result]:
        others = [r for r in requests if not isinstance(r, EmbeddingRequest)]
        answered = dict(zip((r.seq for r in others), self._run(others))) if others else {}
        out: list[Result] = []
        for r in requests:
            if isinstance(r, EmbeddingRequest):
                if not r.spans:
                    raise ValueError(f"embedding request {r.seq} has no spans: the oracle cannot place its audio")
                out.append(EmbeddingResult(r.session_id, r.seq, self.vector(r.spans).astype(np.float32)))
            else:
                out.append(answered[r.seq])
        return out
