"""Endpointing options: :class:`VadOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from streaming.config.units import VAD_CHUNK, ms, require


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
        require(0.0 < self.threshold < 1.0, "VadOptions.threshold must be in (0, 1); 0.5 is a good default")
        if self.neg_threshold is None:
            object.__setattr__(self, "neg_threshold", max(0.01, self.threshold - 0.15))
        require(0.0 < self.neg_threshold <= self.threshold,  # type: ignore[operator]
               "VadOptions.neg_threshold must be in (0, threshold]; leave it unset for threshold - 0.15")
        require(self.min_speech >= 0, "VadOptions.min_speech must be >= 0 samples")
        require(self.min_silence >= VAD_CHUNK, f"VadOptions.min_silence must be >= {VAD_CHUNK} samples (32 ms)")
        require(self.speech_pad >= 0, "VadOptions.speech_pad must be >= 0 samples")
        require(ms(1_000) <= self.max_utterance <= ms(25_000),
               "VadOptions.max_utterance must be between 1 s and 25 s (GigaAM refuses longer input)")
        require(0 < self.cut_search < self.max_utterance,
               "VadOptions.cut_search must be positive and shorter than max_utterance")
