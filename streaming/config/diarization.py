"""Diarization options: :class:`DiarizationOptions` and the step below which ``fresh_evidence`` applies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from streaming.config.units import MAX_SPEAKERS, SAMPLE_RATE, ms, require


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
        require(ms(500) <= self.window <= ms(30_000), "DiarizationOptions.window must be 0.5-30 s (PyanNet: 5 s)")
        require(ms(100) <= self.step <= self.window, "DiarizationOptions.step must be >= 100 ms and <= window")
        require(self.step <= self.latency <= self.window,
               "DiarizationOptions.latency must be between step and window (1.5 s is a good default)")
        require(0.0 < self.tau_active < 1.0, "DiarizationOptions.tau_active must be in (0, 1)")
        require(self.min_embedding_speech >= 0, "DiarizationOptions.min_embedding_speech must be >= 0")
        require(0.0 < self.new_speaker_threshold < 2.0, "DiarizationOptions.new_speaker_threshold must be in (0, 2)")
        require(0.0 <= self.centroid_rate < 1.0, "DiarizationOptions.centroid_rate must be in [0, 1)")
        require(self.max_speakers is None or 1 <= self.max_speakers <= MAX_SPEAKERS,
               f"DiarizationOptions.max_speakers must be 1-{MAX_SPEAKERS} or None")
        require(self.min_speakers is None or 1 <= self.min_speakers <= (self.max_speakers or MAX_SPEAKERS),
               "DiarizationOptions.min_speakers must be None or between 1 and max_speakers")
        require(1 <= self.new_speaker_windows <= self.window // self.step,
               "DiarizationOptions.new_speaker_windows must be between 1 and window / step (2 is a good default)")
        require(0.0 <= self.borderline_margin < 2.0,
               "DiarizationOptions.borderline_margin must be in [0, 2); 0 turns the borderline rule off (0.02 is the "
               "default)")
        require(self.borderline_windows >= 1,
               "DiarizationOptions.borderline_windows must be >= 1 (6 is the default; more than window / step "
               "counts as window / step)")
        require(self.borderline_count >= 1, "DiarizationOptions.borderline_count must be >= 1 (30 is the default)")
        require(0.0 <= self.merge_distance < 2.0,
               "DiarizationOptions.merge_distance must be in [0, 2); 0 never merges speakers (0.2 is the default)")
        require(self.merge_count >= 1, "DiarizationOptions.merge_count must be >= 1 (60 is the default)")
        require(self.aggregation in ("hamming", "mean"),
               "DiarizationOptions.aggregation must be 'hamming' (the default) or 'mean'")
        require(0.0 < self.update_threshold <= 2.0,  # type: ignore[operator]
               "DiarizationOptions.update_threshold must be in (0, 2]; leave it unset for new_speaker_threshold")
        require(self.binarization in ("count", "threshold"),
               "DiarizationOptions.binarization must be 'count' (the default) or 'threshold'")
        require(0.0 < self.continuity_threshold <= 1.0,
               "DiarizationOptions.continuity_threshold must be in (0, 1]; 0.5 means most of the activity agrees")
        require(self.history is None or self.history >= self.window,
               "DiarizationOptions.history must be None (keep every turn) or at least the window (5 min is live's)")
        require(ms(20) <= self.segment_gap <= self.window,
               "DiarizationOptions.segment_gap must be between 20 ms and the window (200 ms is a good default)")
        require(0 <= self.min_segment_speech <= self.window,
               "DiarizationOptions.min_segment_speech must be between 0 and the window (1 s is a good default)")
        require(0.0 < self.change_threshold <= 2.0,
               "DiarizationOptions.change_threshold must be in (0, 2]; 2 never splits a local speaker")
        require(0.0 < self.overlap_match_threshold <= 2.0,
               "DiarizationOptions.overlap_match_threshold must be in (0, 2]")
        require(0 <= self.probe_gap <= self.window,
               "DiarizationOptions.probe_gap must be 0 (off) or at most the window (400 ms is the default; below "
               "segment_gap every short edge segment is probed)")
        require(0.0 < self.probe_level < 1.0,
               "DiarizationOptions.probe_level must be in (0, 1) (0.8 is the default; tau_active or less: pauses as "
               "segments see them)")
        require(0 < self.probe_min_speech <= self.window,
               "DiarizationOptions.probe_min_speech must be between 1 sample and the window (400 ms is the default)")
        require(0.0 < self.probe_match_threshold <= 2.0,
               "DiarizationOptions.probe_match_threshold must be in (0, 2] (0.25 is the default)")
        require(0.0 <= self.pause_depth <= 120.0,
               "DiarizationOptions.pause_depth must be 0 (off) or a level in dB below the window's loud frames")
        require(0.0 <= self.pause_margin < 2.0,
               "DiarizationOptions.pause_margin must be in [0, 2) (0.2 is the default)")
        require(ms(20) <= self.pause_min <= self.window,
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
        require(ms(100) <= step <= self.window,
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
