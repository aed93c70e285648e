"""One session's configuration: :class:`AudioFormat` and :class:`SessionConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from streaming.config.diarization import DiarizationOptions
from streaming.config.partials import PartialOptions
from streaming.config.units import SAMPLE_RATE, ms, require
from streaming.config.vad import VadOptions


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
        require(self.max_pending_audio >= ms(1_000), "SessionConfig.max_pending_audio must be >= 1 s")
        require(self.speculation_budget >= 0, "SessionConfig.speculation_budget must be >= 0 final passes (default 2)")
