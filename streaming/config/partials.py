"""Partial-transcript options: :class:`PartialOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from streaming.config.units import VAD_CHUNK, ms, require


ENCODER_FRAME = ms(40)  # one GigaAM encoder frame (log-mel hop 10 ms, subsampling x4): what a lookahead frame re-encodes


@dataclass(frozen=True)
class PartialOptions:
    """How partial transcripts are produced while an utterance is open (``streaming/partials.py``).

    first_partial: the first partial is due once the open utterance holds this much audio (default 300 ms: at once
        when the VAD opens it, since ``VadOptions.speech_pad + min_speech`` is already 350 ms), so the first
        words show ~0.3 s after speech starts.
    cadence: minimum new audio between two later partials (default 1 s; with cached context shorter windows
        gave worse words: 0.5 s confirmed 0.70 vs 0.80 at 1 s, docs/benchmarks.md, cached partials on ONNX Runtime).
    cadence_growth: the interval grows to this fraction of the utterance's length once that is longer (0.1: 1 s
        between partials at 10 s), so long utterances get fewer, longer decodes.
    left_context: without ``cached_context``: audio re-encoded before the committed prefix's end, for acoustic
        context, when the budget pays for it (at budget 1.0 it never does: each partial then encodes only new
        audio, without context).
    max_window: the longest audio one partial decode may encode; older words are committed.
    budget_ratio: a hard cap on partial decodes: the samples they encode for an utterance stay at most
        ``budget_ratio`` × the utterance's length so far, hence at most ``budget_ratio`` × its one final pass
        (default 1.0: one final pass; issue #14 point 3); missed speculative finals are charged to the same count
        but bounded by ``SessionConfig.speculation_budget`` on top (they are the finals' cost). Left context at
        1.0 comes from ``cached_context``; without it, above 1 the spare budget buys ``left_context`` and
        re-decoding of uncommitted words (1.5 was the default before cached context: docs/benchmarks.md, cheaper
        partials).
    agreement_tolerance: two consecutive decodes agree on a word when its text is equal and both its start and its
        end moved by at most this much.
    fresh_tail: words ending in the last ``fresh_tail`` samples of a decode window are never committed by
        agreement (the audio may cut them off).
    max_lag: partials are skipped while more audio than this waits for the VAD (the session is behind).
    max_pending_requests: partials are also skipped while a channel has more final-ASR and diarization requests
        than this in flight (speculative finals while it has more final-ASR requests: a lagging diarization had
        turned them off at 4 streams on a busy machine, 10 of 33 finals 0.4 s later).
    cached_context: each partial encodes only audio no partial of its utterance has encoded yet, *with* left
        context: the ASR keeps the utterance's encoder state (``server/models/asr_cache.py``, GigaAM CTC and RNNT,
        v1-v3, on the torch and the ONNX Runtime engines, ``asr_cache_onnx.py``) and returns the whole utterance
        so far; an ASR without the cache decodes each window alone (then without context). On by default: with
        budget 1.0, cadence 1 s and ``cached_lookahead`` 2 it measured, on the CPU default engine, confirmed share
        0.796 / WER vs final 0.226 / CER 0.072 at <= 1.0 final pass for every utterance (budget 1.5 without
        the cache: 0.775 / 0.254 / 0.095 with 29 of 60 utterances over 1.0; docs/benchmarks.md, cached partials
        on ONNX Runtime). ``left_context`` and ``max_window`` do not apply.
    cached_lookahead: with ``cached_context``, the last this many encoder frames (``ENCODER_FRAME``, 40 ms each)
        of a partial are provisional and encoded again with the next (right context). Budget-aware: the repeat is
        charged to ``budget_ratio``, so the next window ends that much earlier (at budget 1.0 the window end lags
        the audio by the repeats so far), and a window gets lookahead only while that lag stays within
        ``lookahead_lag`` (default 2 frames).
    lookahead_lag: how far a cached window's end may fall behind the audio to pay for lookahead repeats (400 ms;
        200 ms measured confirmed 0.778 / WER 0.243).
    """

    enabled: bool = True
    first_partial: int = ms(300)
    cadence: int = ms(1_000)
    cadence_growth: float = 0.1
    left_context: int = ms(400)
    max_window: int = ms(4_000)
    budget_ratio: float = 1.0
    agreement_tolerance: int = ms(200)
    fresh_tail: int = ms(500)
    max_lag: int = ms(2_000)
    max_pending_requests: int = 8
    cached_context: bool = True
    cached_lookahead: int = 2
    lookahead_lag: int = ms(400)

    def __post_init__(self) -> None:
        require(self.first_partial >= ms(100), "PartialOptions.first_partial must be >= 100 ms")
        require(self.cadence >= ms(100), "PartialOptions.cadence must be >= 100 ms")
        require(0 <= self.cadence_growth < 1, "PartialOptions.cadence_growth must be in [0, 1); 0 keeps the cadence fixed")
        require(self.left_context >= 0, "PartialOptions.left_context must be >= 0")
        require(self.max_window > self.left_context + self.cadence,
               "PartialOptions.max_window must exceed left_context + cadence")
        require(self.budget_ratio > 0, "PartialOptions.budget_ratio must be > 0 (1.0 keeps partials under one final pass)")
        require(self.agreement_tolerance >= 0, "PartialOptions.agreement_tolerance must be >= 0 samples")
        require(0 <= self.fresh_tail < self.max_window, "PartialOptions.fresh_tail must be >= 0 and below max_window")
        require(self.max_lag >= VAD_CHUNK, f"PartialOptions.max_lag must be >= {VAD_CHUNK} samples (one VAD chunk)")
        require(self.max_pending_requests >= 1, "PartialOptions.max_pending_requests must be >= 1")
        require(0 <= self.cached_lookahead <= 25 and (self.cached_context or not self.cached_lookahead),
               "PartialOptions.cached_lookahead must be 0-25 encoder frames, and needs cached_context")
        require(self.lookahead_lag >= 0, "PartialOptions.lookahead_lag must be >= 0 samples")
