"""Frozen option dataclasses for the streaming core, validated at construction.

Every duration is in samples at 16 kHz (``SAMPLE_RATE``); use :func:`ms` to write them readably. A bad value raises
``ValueError`` with a message that names the field and the fix. The server's CLI only fills these in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

SAMPLE_RATE = 16000
VAD_CHUNK = 512  # Silero VAD's chunk at 16 kHz (32 ms)
MAX_SPEAKERS = 32  # the most global speakers one channel may have (and the bound when max_speakers is None)


def ms(milliseconds: float) -> int:
    """Milliseconds → samples at 16 kHz."""
    return int(round(milliseconds * SAMPLE_RATE / 1000))


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class VadOptions:
    """Endpointing on Silero VAD probabilities (one per 512-sample chunk).

    threshold: speech starts when a chunk's probability reaches it.
    neg_threshold: speech ends only after probabilities stay below it (hysteresis); default ``threshold - 0.15``.
    min_speech: shorter bursts are discarded as noise.
    min_silence: this much silence closes an utterance (about 500 ms: shorter pauses stay inside it).
    speech_pad: padding added on both sides of an utterance (never beyond neighbouring audio).
    max_utterance: longer speech is cut at the quietest point of its last ``cut_search`` samples
        (GigaAM refuses more than 25 s).
    """

    threshold: float = 0.5
    neg_threshold: Optional[float] = None
    min_speech: int = ms(250)
    min_silence: int = ms(500)
    speech_pad: int = ms(100)
    max_utterance: int = ms(20_000)
    cut_search: int = ms(3_000)

    def __post_init__(self) -> None:
        _check(0.0 < self.threshold < 1.0, "VadOptions.threshold must be in (0, 1); 0.5 is a good default")
        if self.neg_threshold is None:
            object.__setattr__(self, "neg_threshold", max(0.01, self.threshold - 0.15))
        _check(0.0 < self.neg_threshold <= self.threshold,  # type: ignore[operator]
               "VadOptions.neg_threshold must be in (0, threshold]; leave it unset for threshold - 0.15")
        _check(self.min_speech >= 0, "VadOptions.min_speech must be >= 0 samples")
        _check(self.min_silence >= VAD_CHUNK, f"VadOptions.min_silence must be >= {VAD_CHUNK} samples (32 ms)")
        _check(self.speech_pad >= 0, "VadOptions.speech_pad must be >= 0 samples")
        _check(ms(1_000) <= self.max_utterance <= ms(25_000),
               "VadOptions.max_utterance must be between 1 s and 25 s (GigaAM refuses longer input)")
        _check(0 < self.cut_search < self.max_utterance,
               "VadOptions.cut_search must be positive and shorter than max_utterance")


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
        _check(self.first_partial >= ms(100), "PartialOptions.first_partial must be >= 100 ms")
        _check(self.cadence >= ms(100), "PartialOptions.cadence must be >= 100 ms")
        _check(0 <= self.cadence_growth < 1, "PartialOptions.cadence_growth must be in [0, 1); 0 keeps the cadence fixed")
        _check(self.left_context >= 0, "PartialOptions.left_context must be >= 0")
        _check(self.max_window > self.left_context + self.cadence,
               "PartialOptions.max_window must exceed left_context + cadence")
        _check(self.budget_ratio > 0, "PartialOptions.budget_ratio must be > 0 (1.0 keeps partials under one final pass)")
        _check(self.agreement_tolerance >= 0, "PartialOptions.agreement_tolerance must be >= 0 samples")
        _check(0 <= self.fresh_tail < self.max_window, "PartialOptions.fresh_tail must be >= 0 and below max_window")
        _check(self.max_lag >= VAD_CHUNK, f"PartialOptions.max_lag must be >= {VAD_CHUNK} samples (one VAD chunk)")
        _check(self.max_pending_requests >= 1, "PartialOptions.max_pending_requests must be >= 1")
        _check(0 <= self.cached_lookahead <= 25 and (self.cached_context or not self.cached_lookahead),
               "PartialOptions.cached_lookahead must be 0-25 encoder frames, and needs cached_context")
        _check(self.lookahead_lag >= 0, "PartialOptions.lookahead_lag must be >= 0 samples")


# ``DiarizationOptions.fresh_evidence`` applies only at steps shorter than this. At the 0.5 s step it stops a
# mixture re-embedded by two windows over the same audio from founding a phantom. At 1 s a short turn ends at the
# same sample in every window that holds it, so the rule leaves one piece of evidence, and such voices never found
# a speaker: at 1 s AMI DER is .282 with it and .258 without (speakers miscounted: 17 and 11). The price is on the
# held-out real-voice conversations: 5 speakers miscounted without it, 1 with it, 6 at the 0.5 s step with it. The
# 60-minute replay passes either way (docs/benchmarks.md, "The CPU default: a 1 s step").
FRESH_EVIDENCE_BELOW = ms(1_000)


@dataclass(frozen=True)
class DiarizationOptions:
    """Windowed segmentation + embedding tracking.

    window: segmentation window: the segmentation model's training duration (PyanNet 5 s, segmentation-3.0 10 s;
        the server takes it from the loaded model, ``server.models.registry.fit_diarizer``). step: a new window
        every step (change it with :meth:`at_step`, which rescales the counts tied to it; 1 s halves diarization's
        compute, docs/benchmarks.md "A 1 s step").
    latency: how far behind the newest audio a speaker turn becomes final (between step and window).
    tau_active: a local speaker is active in a frame when its score exceeds this.
    min_embedding_speech: a local speaker needs this much clean speech (frames where only it is active) in a window
        for an embedding; with less, its overlapped frames are used if they hold this much (an overlap embedding
        only matches an existing speaker, within ``overlap_match_threshold``); with less still, it gets none.
    segment_gap: a local speaker's speech is cut into segments at pauses at least this long; each segment is
        embedded on its own (see :mod:`streaming.voice_segments`).
    min_segment_speech: segments with less speech than this are merged into their nearer neighbour.
    change_threshold: consecutive segments of one local speaker farther apart than this cosine distance are
        different voices (the segmentation model gave two speakers who followed each other one local speaker).
        0.3 halved label flips and confusion on composed conversations of the tuning seeds.
    overlap_match_threshold: an embedding taken over overlapped speech maps to the nearest free global speaker
        within this cosine distance, and never creates or updates one.
    new_speaker_threshold: cosine distance above which a local speaker starts a new global speaker. Tuned for the
        default resemblyzer embeddings, whose same-speaker distances are small (benchmarks/der.py: 0.25 is best on
        AMI, pyannote's sample and composed conversations); pyannote/WeSpeaker embeddings need about 0.5-0.7.
    centroid_rate: weight of a new embedding in its centroid's running mean (0 = plain mean).
    max_speakers: upper bound on global speakers (None = unbounded, capped at ``MAX_SPEAKERS``). When every slot is
        used, a voice joins the nearest free speaker however far it is: there are no phantom speakers beyond it.
    min_speakers: lower bound hint (None = none). Until that many speakers exist, a new speaker needs one window's
        evidence instead of ``new_speaker_windows``, and a voice the segmentation model separates from a closer one
        in the same window founds a new speaker instead of being left out. A session that never hears that many
        distinct voices ends with fewer (streaming cannot invent the rest). Set both bounds for an exact count
        (:meth:`with_speaker_counts`).
    new_speaker_windows: a new global speaker is created only once embeddings far from every centroid (and close
        to each other) came from this many windows within ``window`` samples of each other; until then those local
        speakers stay unassigned. One noisy embedding thus cannot found a duplicate speaker (1 = create at once).
        While a candidate waits, the turns of the windows that heard it are not made final (for at most ``window``
        behind the newest audio), so a confirmed speaker is credited with all of its first words.
    fresh_evidence: a window adds to a candidate's count of ``new_speaker_windows`` (and ``borderline_windows``)
        only when the voice's speech in it ends at least ``step / 2`` later than the speech that last counted:
        consecutive windows overlap by ``window - step``, so two windows that embed the same 2-3 s of speech are one
        piece of evidence, not two. On the composed real 3-voice conversation of seed 303 one local speaker held the
        end of one voice's turn and, after a 1.8 s pause, 0.5 s of the next voice's (both short, so one segment);
        the mixture lay 0.28-0.37 from both voices in two windows ending 0.5 s apart over the same audio and founded a
        phantom that took 0.5 s of speech. With the rule it waits for more speech and expires. False: every window
        counts. The rule applies only at steps below ``FRESH_EVIDENCE_BELOW`` (1 s; :attr:`applies_fresh_evidence`).
    borderline_margin: a candidate new speaker whose mean lies within ``new_speaker_threshold + borderline_margin``
        of a mature live speaker (one holding ``borderline_count`` embeddings) needs ``borderline_windows`` windows
        of confirmation instead of ``new_speaker_windows``: on the composed real 5-voice conversation one voice's
        1.6 s turn after an overlap lay 0.26-0.28 from its own well-estimated centroid (0.37 and more from every
        other) in two windows and founded a phantom, while a few windows later the same speech was back within
        0.25. Young speakers are exempt: pyannote's sample's second speaker starts 0.25-0.28 from the first one's
        young centroid (without the maturity condition its DER rose .145 -> .28). 0.02 and 0.03 scored alike on
        the development sets; 0.03 never confirmed the third voice of the 90 s espeak conversation of
        ``tests/server/test_diarization_real.py`` (0.02 finds it). 0 = off.
    borderline_windows: see ``borderline_margin`` (6: 3 s of windows; the waiting voice's frames stay open for it,
        at most a window).
    borderline_count: see ``borderline_margin`` (30 embeddings at the 0.5 s step; 60 left AMI's DER unchanged, 30
        lowered it; :meth:`at_step` scales it with the step).
    merge_distance: two live speakers whose centroids have come within this cosine distance are merged (the one
        with more embeddings keeps its label; the other's label is retired, later speech gets the kept one, and a
        ``speaker_merge`` event tells clients to relabel what they already received). A voice whose embeddings spread widely (one real voice of the hour-long check:
        half of them beyond 0.16 of its own mean) founds "phantom" speakers 0.25-0.4 from its first centroid, and
        their centroids then drift to within 0.05-0.2 of it, while distinct voices stayed >= 0.22 apart; 0.22
        merged two real voices there. 0 = never merge.
    merge_count: a merge also needs the larger of the two speakers to hold at least this many embeddings (a
        well-estimated centroid): on the 30-60 s AMI files, young centroids of two real speakers come within 0.2
        (merging at 45 raised their DER .260 -> .299; 50 and up left every development set unchanged); counted at
        the 0.5 s step (:meth:`at_step` scales it).
    merge_apart: two live speakers that no window ever heard as two local speakers at once also merge when their
        centroids come within ``merge_distance`` before either holds ``merge_count`` embeddings: the segmentation
        model rarely splits one voice into two local speakers of a window, while two people in one conversation
        alternate within a window's few seconds. On the composed real 5-voice conversation of seed 405 one widely
        spread voice held five labels whose centroids lay 0.08-0.19 apart with 15-50 embeddings each (never
        merged: 20 flips, 5 phantom labels); the two real AMI speakers whose young centroids come within 0.2 on
        the 60 s excerpt were heard together, so they stay apart (lowering ``merge_count`` to 45 merged them:
        DER .109 -> .678). Off by default: on held-out real-voice conversations (seeds 600 + n, 700 + n) it
        removed 2 phantom labels and 2 relabels but added a flip and raised one set's DER .258 -> .270
        (docs/benchmarks.md). False: only the maturity rule merges.
    aggregation: how overlapping windows are averaged per frame: ``"hamming"`` weighs each window's frames by a
        Hamming window (its edges, where the model lacked context, count little), ``"mean"`` weighs them equally.
        Hamming lowered DER on every data set in ``benchmarks/der.py`` at 1.5 s latency.
    update_threshold: a centroid only learns from embeddings closer than this cosine distance (default: the
        new-speaker threshold), so borderline or forced matches do not drag it towards another voice.
    binarization: how the aggregated scores become final activity. ``"count"``: every frame gets as many speakers as
        the windows heard there (their weighted mean number of active local speakers, named or not, rounded), the
        ones with the highest aggregated scores, as pyannote's offline reconstruction does; a speaker the windows
        agree on is kept even when its averaged score sits just under ``tau_active`` in a second voice's overlap.
        ``"threshold"``: every speaker whose aggregated score exceeds ``tau_active``. ``benchmarks/der.py``: count
        lowered DER on AMI (.284 → .277 at 1.5 s latency, .277 → .263 at 5 s) and on every other data set.
    continuity_threshold: a local speaker without an embedding (too little clean speech) joins the global speaker
        whose activity in the previous window matches its own on the frames both windows cover with at least this
        intersection over union; below it, the local speaker is left out of that window. A voice whose embedding
        joined a candidate new speaker is never mapped this way: it waits for the candidate's confirmation.
    probe_gap: a *probe* is a local speaker's first or last stretch of confident speech (clean frames scored above
        ``probe_level``) that a pause of at least this sets apart from the rest and that holds less than
        ``min_segment_speech`` (so its segment merged it with the rest) but at least ``probe_min_speech``; it is
        embedded on its own as well (:func:`streaming.voice_segments.plan_probes`), and when it lies within
        ``probe_match_threshold`` of another live speaker and farther than ``change_threshold`` from the speaker its
        local speaker got, its frames go to that speaker. On the composed real 5-voice conversation PyanNet gave one
        voice and the next voice's first 0.62 s (after a 0.55 s pause) one local speaker in four windows: 2 flips
        (``benchmarks/der.py``). 0 = off. 0.4 and 0.5 s fixed them; 0.5 s lost 2 of the 6 flips it removed on the
        held-out espeak conversations; 0.15-0.3 s removed no more and probed more.
    probe_level: see ``probe_gap``: PyanNet bridged that pause with scores of 0.5-0.8 in three of the four windows,
        so pauses at ``tau_active`` did not show it. 0.7 lost 2 of the espeak flips removed, 0.9-0.95 removed none
        more.
    probe_min_speech: see ``probe_gap`` (none is made when it exceeds ``min_segment_speech``). The handover's
        probes held 0.43-0.65 s; 0.3 s removed no more flips, 0.5 s the same ones.
    probe_match_threshold: see ``probe_gap``. The handover's probes lay 0.21-0.23 from their voice's centroid (and
        0.53-0.54 from the previous voice's): 0.22 kept both flips, 0.25 and 0.3 scored alike everywhere.
    pause_depth: an *acoustic pause* is a run of at least ``pause_min`` frames whose audio level lies more than this
        many dB below the window's loud frames (the 95th percentile of its frame levels). A segment of a local speaker
        with speech on both sides of one is also embedded piece by piece (pieces of at least ``min_segment_speech``),
        and a piece becomes a voice of its own when its embedding lies farther than ``change_threshold`` from the
        pieces before it *and* within ``new_speaker_threshold`` of a known speaker, every other one ``pause_margin``
        farther, other than the one the pieces before it sound like; otherwise the segment and its own embedding
        are used as without the option (:func:`streaming.voice_segments.refine_at_pauses`):
        at handovers PyanNet often gives both voices one local speaker whose scores bridge the 0.15-0.25 s silence
        between the turns (0.6-0.8 there), so no pause in the scores cuts it (held-out espeak conversations: the
        new voice's first 0.3-0.8 s under the previous voice's label), while one voice's sentences are parted by
        silences too (the second condition keeps them one voice). Off by default: with 25 dB, espeak flips fell by a
        quarter to a third on the fit and held-out seed sets, AMI and the sample unchanged, but one held-out
        real-voice set gained 3 flips (docs/benchmarks.md, "Acoustic pauses"). 0 = off.
    pause_min: see ``pause_depth`` (150 ms: a stop closure inside a word is shorter).
    pause_margin: see ``pause_depth``: a known speaker counts as the nearest only when every other live one lies at
        least this much farther (cosine distance). 0.1 split one AMI voice's turn onto a second label of the same
        voice (``ami_debug_trn06``: .182 -> .368 DER), 0.2 left every AMI file unchanged.
    history: how long final turns are kept after they end, for the speakers of finals that come later (a live
        final comes seconds after its speech); ``None`` keeps every turn: a whole file's finals may all come at its
        end (``rechka-transcribe``), and with 5 minutes most of a 30-minute file's finals had no speaker.
    """

    window: int = ms(5_000)
    step: int = ms(500)
    latency: int = ms(1_500)
    tau_active: float = 0.5
    min_embedding_speech: int = ms(500)
    new_speaker_threshold: float = 0.25
    centroid_rate: float = 0.0
    max_speakers: Optional[int] = None
    min_speakers: Optional[int] = None
    new_speaker_windows: int = 2
    fresh_evidence: bool = True
    borderline_margin: float = 0.02
    borderline_windows: int = 6
    borderline_count: int = 30
    merge_distance: float = 0.2
    merge_count: int = 60
    merge_apart: bool = False
    aggregation: str = "hamming"
    update_threshold: Optional[float] = None
    continuity_threshold: float = 0.5
    binarization: str = "count"
    segment_gap: int = ms(200)
    min_segment_speech: int = ms(1_000)
    change_threshold: float = 0.3
    overlap_match_threshold: float = 0.45
    probe_gap: int = ms(400)
    probe_level: float = 0.8
    probe_min_speech: int = ms(400)
    probe_match_threshold: float = 0.25
    pause_depth: float = 0.0
    pause_min: int = ms(150)
    pause_margin: float = 0.2
    history: Optional[int] = ms(300_000)

    def __post_init__(self) -> None:
        if self.update_threshold is None:
            object.__setattr__(self, "update_threshold", self.new_speaker_threshold)
        _check(ms(500) <= self.window <= ms(30_000), "DiarizationOptions.window must be 0.5-30 s (PyanNet: 5 s)")
        _check(ms(100) <= self.step <= self.window, "DiarizationOptions.step must be >= 100 ms and <= window")
        _check(self.step <= self.latency <= self.window,
               "DiarizationOptions.latency must be between step and window (1.5 s is a good default)")
        _check(0.0 < self.tau_active < 1.0, "DiarizationOptions.tau_active must be in (0, 1)")
        _check(self.min_embedding_speech >= 0, "DiarizationOptions.min_embedding_speech must be >= 0")
        _check(0.0 < self.new_speaker_threshold < 2.0, "DiarizationOptions.new_speaker_threshold must be in (0, 2)")
        _check(0.0 <= self.centroid_rate < 1.0, "DiarizationOptions.centroid_rate must be in [0, 1)")
        _check(self.max_speakers is None or 1 <= self.max_speakers <= MAX_SPEAKERS,
               f"DiarizationOptions.max_speakers must be 1-{MAX_SPEAKERS} or None")
        _check(self.min_speakers is None or 1 <= self.min_speakers <= (self.max_speakers or MAX_SPEAKERS),
               "DiarizationOptions.min_speakers must be None or between 1 and max_speakers")
        _check(1 <= self.new_speaker_windows <= self.window // self.step,
               "DiarizationOptions.new_speaker_windows must be between 1 and window / step (2 is a good default)")
        _check(0.0 <= self.borderline_margin < 2.0,
               "DiarizationOptions.borderline_margin must be in [0, 2); 0 turns the borderline rule off (0.02 is the "
               "default)")
        _check(self.borderline_windows >= 1,
               "DiarizationOptions.borderline_windows must be >= 1 (6 is the default; more than window / step "
               "counts as window / step)")
        _check(self.borderline_count >= 1, "DiarizationOptions.borderline_count must be >= 1 (30 is the default)")
        _check(0.0 <= self.merge_distance < 2.0,
               "DiarizationOptions.merge_distance must be in [0, 2); 0 never merges speakers (0.2 is the default)")
        _check(self.merge_count >= 1, "DiarizationOptions.merge_count must be >= 1 (60 is the default)")
        _check(self.aggregation in ("hamming", "mean"),
               "DiarizationOptions.aggregation must be 'hamming' (the default) or 'mean'")
        _check(0.0 < self.update_threshold <= 2.0,  # type: ignore[operator]
               "DiarizationOptions.update_threshold must be in (0, 2]; leave it unset for new_speaker_threshold")
        _check(self.binarization in ("count", "threshold"),
               "DiarizationOptions.binarization must be 'count' (the default) or 'threshold'")
        _check(0.0 < self.continuity_threshold <= 1.0,
               "DiarizationOptions.continuity_threshold must be in (0, 1]; 0.5 means most of the activity agrees")
        _check(self.history is None or self.history >= self.window,
               "DiarizationOptions.history must be None (keep every turn) or at least the window (5 min is live's)")
        _check(ms(20) <= self.segment_gap <= self.window,
               "DiarizationOptions.segment_gap must be between 20 ms and the window (200 ms is a good default)")
        _check(0 <= self.min_segment_speech <= self.window,
               "DiarizationOptions.min_segment_speech must be between 0 and the window (1 s is a good default)")
        _check(0.0 < self.change_threshold <= 2.0,
               "DiarizationOptions.change_threshold must be in (0, 2]; 2 never splits a local speaker")
        _check(0.0 < self.overlap_match_threshold <= 2.0,
               "DiarizationOptions.overlap_match_threshold must be in (0, 2]")
        _check(0 <= self.probe_gap <= self.window,
               "DiarizationOptions.probe_gap must be 0 (off) or at most the window (400 ms is the default; below "
               "segment_gap every short edge segment is probed)")
        _check(0.0 < self.probe_level < 1.0,
               "DiarizationOptions.probe_level must be in (0, 1) (0.8 is the default; tau_active or less: pauses as "
               "segments see them)")
        _check(0 < self.probe_min_speech <= self.window,
               "DiarizationOptions.probe_min_speech must be between 1 sample and the window (400 ms is the default)")
        _check(0.0 < self.probe_match_threshold <= 2.0,
               "DiarizationOptions.probe_match_threshold must be in (0, 2] (0.25 is the default)")
        _check(0.0 <= self.pause_depth <= 120.0,
               "DiarizationOptions.pause_depth must be 0 (off) or a level in dB below the window's loud frames")
        _check(0.0 <= self.pause_margin < 2.0,
               "DiarizationOptions.pause_margin must be in [0, 2) (0.2 is the default)")
        _check(ms(20) <= self.pause_min <= self.window,
               "DiarizationOptions.pause_min must be between 20 ms and the window (150 ms is the default)")

    @property
    def applies_fresh_evidence(self) -> bool:
        """Whether the tracker applies ``fresh_evidence``: it is on and the step is below ``FRESH_EVIDENCE_BELOW``."""
        return self.fresh_evidence and self.step < FRESH_EVIDENCE_BELOW

    def at_step(self, step: int) -> "DiarizationOptions":
        """These options with a window every ``step`` samples: ``latency`` raised to at least the step, and the
        counts of embeddings (``borderline_count``, ``merge_count``; a voice gets about one per window) scaled by
        the old step over the new one, so a centroid matures after as much speech as before. ``new_speaker_windows``
        is capped at ``window / step``. Raises ``ValueError`` for a step outside 100 ms to the window."""
        _check(ms(100) <= step <= self.window,
               f"the diarization step must be between 0.1 s and the window ({self.window / SAMPLE_RATE:g} s)")
        scale = self.step / step
        return dataclasses.replace(
            self, step=step, latency=min(self.window, max(self.latency, step)),
            new_speaker_windows=min(self.new_speaker_windows, self.window // step),
            borderline_count=max(1, round(self.borderline_count * scale)),
            merge_count=max(1, round(self.merge_count * scale)))

    def with_speaker_counts(self, min_speakers: Optional[int] = None, max_speakers: Optional[int] = None,
                            num_speakers: Optional[int] = None) -> "DiarizationOptions":
        """These options with one session's speaker-count hints (``None`` keeps the option); ``num_speakers`` is an
        exact count, i.e. both bounds. Raises ``ValueError`` naming the field (a client's bad ``start``)."""
        for name, value in (("min_speakers", min_speakers), ("max_speakers", max_speakers),
                            ("num_speakers", num_speakers)):
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise ValueError(f"field '{name}' must be between 1 and {MAX_SPEAKERS}, or null")
        if num_speakers is not None:
            if min_speakers not in (None, num_speakers) or max_speakers not in (None, num_speakers):
                raise ValueError("field 'num_speakers' contradicts 'min_speakers'/'max_speakers'; give the exact "
                                 "count alone, or only the bounds")
            min_speakers = max_speakers = num_speakers
        low = self.min_speakers if min_speakers is None else min_speakers
        high = self.max_speakers if max_speakers is None else max_speakers
        if low is not None and high is not None and low > high:
            raise ValueError(f"field 'min_speakers' ({low}) must not exceed 'max_speakers' ({high})")
        return dataclasses.replace(self, min_speakers=low, max_speakers=high)


@dataclass(frozen=True)
class AudioFormat:
    """What the client sends. Validated by ``streaming.audio`` (raises ``UnsupportedFormat``)."""

    encoding: str = "pcm_s16le"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1


@dataclass(frozen=True)
class SessionConfig:
    """Everything one :class:`~streaming.session.Session` needs.

    multichannel: transcribe each channel on its own, labelled ``ch0``, ``ch1``…; no diarization compute.
    settled_speakers: a final waits until diarization has settled the speakers of its words (never revised, about
        ``DiarizationOptions.latency`` later); by default it goes out as soon as its words are decoded, with the
        speakers diarization holds then, and a ``SpeakerRevision`` follows if the settled speakers differ.
    speculative_finals: send an utterance's final decode as soon as its audio is complete (a pause has lasted
        ``VadOptions.speech_pad``) instead of when the VAD closes it (the pause reaches ``min_silence``), so the
        decode runs while the VAD waits. When the VAD then closes the utterance at that end, the final is that
        decode's result (the identical request: finals are unchanged); when speech resumes, the result is used as
        a partial and its samples are charged to the partial budget (``PartialOptions.budget_ratio``). On the
        shared recordings (``benchmarks/speculative.py``) final latency fell 0.73 → 0.43 s p50, 0.98 → 0.60 s p95
        for +5-7 % ASR compute.
    speculation_budget: a speculation is sent only while the utterance's partial compute (partial decodes plus
        missed speculations, this one counted) stays within ``budget_ratio + speculation_budget`` final passes of
        the utterance so far; 2.0 let all but a few pauses of real speech speculate (1.0 raised p95 to 0.75 s),
        and bounds the cost of speech with many short pauses.
    max_pending_audio: bound on audio received but not yet through VAD (backpressure); beyond it the oldest
        audio is dropped and the client is warned with the dropped seconds.
    """

    audio: AudioFormat = field(default_factory=AudioFormat)
    multichannel: bool = False
    diarization: bool = True
    interim_results: bool = True
    speaker_turns: bool = False
    settled_speakers: bool = False
    speculative_finals: bool = True
    speculation_budget: float = 2.0
    vad: VadOptions = field(default_factory=VadOptions)
    partials: PartialOptions = field(default_factory=PartialOptions)
    diarizer: DiarizationOptions = field(default_factory=DiarizationOptions)
    max_pending_audio: int = ms(30_000)

    def __post_init__(self) -> None:
        _check(self.max_pending_audio >= ms(1_000), "SessionConfig.max_pending_audio must be >= 1 s")
        _check(self.speculation_budget >= 0, "SessionConfig.speculation_budget must be >= 0 final passes (default 2)")
