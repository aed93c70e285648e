"""Compose multi-speaker conversations whose reference diarization is known by construction.

Each speaker is a distinct espeak-ng voice (Russian text, different variant, pitch and speed) or, with
``--source real``, the clips of one real speaker from ``/work/shared/speech/speakers/`` (skipped when absent).
Turns of one to three sentences follow each other with short pauses; some overlap the previous turn (both speakers
talk at once), one speaker stays silent for a long stretch mid-way and then returns (label stability), and a quiet
noise floor is added. The reference is the union of each turn's own speech regions (energy-based on the clean
rendering, pauses ≥ 250 ms split a turn), written as RTTM next to a 16 kHz WAV.

    python -m benchmarks.compose --speakers 2,3,4,6 --minutes 5 --out benchmarks/out/composed
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf
import soxr

SR = 16000
SPEAKERS_DIR = Path("/work/shared/speech/speakers")
OUT_DIR = Path(__file__).resolve().parent / "out" / "composed"


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice: a Russian variant with its own pitch, pitch range and speed."""

    name: str
    variant: str
    pitch: int
    speed: int

    def args(self) -> list[str]:
        return ["-v", f"ru+{self.variant}", "-p", str(self.pitch), "-s", str(self.speed)]


# Eight espeak-ng variants that a speaker encoder tells apart: chosen among ~110 variant/pitch pairs as the set with
# the largest smallest pairwise cosine distance between resemblyzer centroids of 12 sentences each (>= 0.28, while
# each voice's own sentences lie ~0.06 from its centroid). Many variants are one voice to an encoder (m1, m3 and
# croak lie within 0.06 of each other), which would measure the encoder, not the tracker.
VOICES = (
    Voice("f5", "f5", 60, 160),
    Voice("announcer", "announcer", 30, 160),
    Voice("Lee", "Lee", 30, 160),
    Voice("anika", "anika", 60, 160),
    Voice("Storm", "Storm", 60, 160),
    Voice("steph", "steph", 30, 160),
    Voice("zac", "zac", 30, 160),
    Voice("iven", "iven", 30, 160),
)

SENTENCES = (
    "Добрый день, давайте начнём наше совещание.",
    "Сегодня у нас три вопроса на повестке.",
    "Я посмотрел отчёт за прошлую неделю.",
    "Мне кажется, цифры немного завышены.",
    "Нет, я проверял их два раза.",
    "Хорошо, тогда перейдём к следующему пункту.",
    "Когда мы сможем запустить новую версию?",
    "Думаю, не раньше конца месяца.",
    "Тестирование займёт ещё примерно неделю.",
    "А что с документацией?",
    "Документацию я допишу к пятнице.",
    "Отлично, это нас вполне устраивает.",
    "У меня есть вопрос по бюджету.",
    "Сколько денег осталось на этот квартал?",
    "Примерно половина от запланированного.",
    "Значит, мы можем нанять ещё одного разработчика.",
    "Я бы сначала обсудил это с руководством.",
    "Согласен, спешить здесь не стоит.",
    "Кто возьмёт на себя встречу с клиентом?",
    "Я могу поехать во вторник утром.",
    "Во вторник у меня другая встреча, давай в среду.",
    "Среда мне тоже подходит.",
    "Тогда договорились, в среду в десять часов.",
    "Не забудьте прислать презентацию заранее.",
    "Презентация почти готова, осталось добавить графики.",
    "Графики лучше сделать попроще.",
    "Клиенту важны сроки, а не красивые картинки.",
    "Это правда, но картинки тоже помогают.",
    "Давайте не будем спорить об этом сейчас.",
    "Перейдём к последнему вопросу.",
    "Нам нужно выбрать новое место для офиса.",
    "Я нашёл два варианта в центре города.",
    "Один из них слишком дорогой.",
    "Второй дешевле, но там мало парковки.",
    "Большинство из нас ездит на метро.",
    "Тогда парковка не так уж важна.",
    "Я предлагаю посмотреть оба варианта на месте.",
    "Хорошая идея, поедем в четверг.",
    "Всем спасибо, на сегодня всё.",
    "Подождите, у меня ещё одно короткое объявление.",
    "В субботу мы отмечаем день рождения компании.",
    "Приходите все, будет интересно.",
    "Обязательно придём, спасибо за приглашение.",
    "Погода на выходных обещает быть хорошей.",
    "Может быть, устроим праздник на улице?",
    "Если не будет дождя, почему бы и нет.",
)


@dataclass
class Conversation:
    """A composed recording: ``audio`` (float32, 16 kHz) and reference segments ``(speaker, start, end)`` in
    samples (they may overlap)."""

    name: str
    audio: np.ndarray
    reference: list[tuple[str, int, int]]

    def rttm(self) -> str:
        return "".join(f"SPEAKER {self.name} 1 {a / SR:.3f} {(b - a) / SR:.3f} <NA> <NA> {s} <NA> <NA>\n"
                       for s, a, b in sorted(self.reference, key=lambda r: (r[1], r[0])))

    def write(self, directory: Path) -> Path:
        """Write ``<name>.wav`` and ``<name>.rttm``; returns the WAV path."""
        directory.mkdir(parents=True, exist_ok=True)
        wav = directory / f"{self.name}.wav"
        sf.write(wav, self.audio, SR, subtype="PCM_16")
        (directory / f"{self.name}.rttm").write_text(self.rttm())
        return wav


def render(voice: Voice, text: str) -> np.ndarray:
    """One espeak-ng utterance at 16 kHz (float32)."""
    wav = subprocess.run(["espeak-ng", *voice.args(), "--stdout", text], check=True, capture_output=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, rate, SR).astype(np.float32)


def speech_regions(audio: np.ndarray, min_gap: int = SR // 4, frame: int = SR // 100,
                   rel_threshold_db: float = -35.0) -> list[tuple[int, int]]:
    """``[a, b)`` sample spans where a clean rendering has energy within ``rel_threshold_db`` of its loudest 10 ms
    frame; gaps shorter than ``min_gap`` are bridged."""
    n = len(audio) // frame
    if not n:
        return []
    energy = (audio[:n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    loud = 10 * np.log10(energy + 1e-12) > 10 * np.log10(energy.max() + 1e-12) + rel_threshold_db
    spans: list[tuple[int, int]] = []
    padded = np.concatenate([[False], loud, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    for a, b in zip(edges[::2] * frame, edges[1::2] * frame):
        if spans and a - spans[-1][1] < min_gap:
            spans[-1] = (spans[-1][0], int(b))
        else:
            spans.append((int(a), int(b)))
    return spans


def _trim(audio: np.ndarray) -> np.ndarray:
    spans = speech_regions(audio)
    return audio[spans[0][0]:spans[-1][1]] if spans else audio[:0]


def _real_pieces(speaker_files: Sequence[Path], rng: np.random.Generator) -> list[np.ndarray]:
    """Utterance-sized pieces (1.5-6 s, cut at pauses) of one real speaker's clips."""
    pieces: list[np.ndarray] = []
    for path in speaker_files:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), rate, SR).astype(np.float32) if rate != SR else audio.mean(axis=1)
        start, end = None, 0
        for a, b in speech_regions(audio, min_gap=SR // 3):
            start, end = (a if start is None else start), b
            if b - start >= rng.uniform(1.5, 6.0) * SR:
                pieces.append(audio[start:b])
                start = None
        if start is not None and end - start >= SR:
            pieces.append(audio[start:end])
    rng.shuffle(pieces)  # type: ignore[arg-type]
    return pieces


def compose(n_speakers: int, minutes: float = 5.0, seed: int = 0, overlap_rate: float = 0.15,
            source: str = "espeak", name: Optional[str] = None) -> Conversation:
    """A conversation of about ``minutes`` with ``n_speakers`` speakers (2-8 espeak voices, or real speakers)."""
    rng = np.random.default_rng(seed)
    total_target = int(minutes * 60 * SR)
    if source == "espeak":
        if not 2 <= n_speakers <= len(VOICES):
            raise ValueError(f"n_speakers must be 2-{len(VOICES)} for espeak voices")
        voices = [VOICES[i] for i in rng.permutation(len(VOICES))[:n_speakers]]
        labels = [v.name for v in voices]

        def utterance(s: int) -> np.ndarray:
            text = " ".join(SENTENCES[i] for i in rng.choice(len(SENTENCES), size=rng.integers(1, 4),
                                                               replace=False))
            return _trim(render(voices[s], text))
    elif source == "real":
        files: dict[str, list[Path]] = {}
        for path in sorted(SPEAKERS_DIR.glob("*__*.wav")):
            files.setdefault(path.name.split("__")[0], []).append(path)
        if len(files) < n_speakers:
            raise ValueError(f"only {len(files)} real speakers in {SPEAKERS_DIR}")
        labels = [sorted(files)[i] for i in rng.permutation(len(files))[:n_speakers]]
        pools = [_real_pieces(files[label], rng) for label in labels]
        used = [0] * n_speakers

        def utterance(s: int) -> np.ndarray:
            piece = pools[s][used[s] % len(pools[s])]
            used[s] += 1
            return piece
    else:
        raise ValueError("source must be 'espeak' or 'real'")

    # the speaker who leaves for a long stretch in the middle (about a fifth of the conversation) and comes back
    absent = int(rng.integers(n_speakers))
    absence = (int(0.4 * total_target), int(0.6 * total_target))
    placed: list[tuple[int, int, np.ndarray]] = []  # (speaker, start, audio)
    cursor, previous = int(rng.uniform(0.3, 1.0) * SR), -1
    while cursor < total_target:
        candidates = [s for s in range(n_speakers) if s != previous
                      and not (s == absent and absence[0] <= cursor < absence[1])] or [previous]
        speaker = int(rng.choice(candidates))
        audio = utterance(speaker)
        gain = 10 ** ((-20.0 + rng.uniform(-3, 3)) / 20) / max(1e-6, float(np.sqrt(np.mean(audio ** 2))))
        start = cursor
        if placed and rng.random() < overlap_rate:
            prev_start, prev_audio = placed[-1][1], placed[-1][2]
            start = max(prev_start + SR // 2, prev_start + len(prev_audio) - int(rng.uniform(0.4, 1.5) * SR))
        placed.append((speaker, start, (audio * gain).astype(np.float32)))
        pause = rng.uniform(0.15, 0.9) if rng.random() > 0.05 else rng.uniform(3.0, 8.0)
        cursor = max(cursor, start + len(audio)) + int(pause * SR)
        previous = speaker

    return mix_turns(placed, labels, cursor + SR, rng, name or f"{source}_{n_speakers}spk_s{seed}")


def mix_turns(placed: Sequence[tuple[int, int, np.ndarray]], labels: Sequence[str], total: int,
              rng: np.random.Generator, name: str) -> Conversation:
    """``(speaker, start, audio)`` turns mixed over a -55 dBFS noise floor of ``total`` samples (peak kept under
    0.99), with the reference: each turn's own speech regions."""
    mix = (rng.normal(size=total) * 10 ** (-55 / 20)).astype(np.float32)
    reference: list[tuple[str, int, int]] = []
    for speaker, start, audio in placed:
        mix[start:start + len(audio)] += audio
        reference += [(labels[speaker], start + a, start + b) for a, b in speech_regions(audio)]
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    return Conversation(name, mix, reference)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", default="2,3,4,6", help="comma-separated speaker counts, one file each")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overlap-rate", type=float, default=0.15, help="fraction of turns overlapping the previous")
    parser.add_argument("--source", choices=("espeak", "real"), default="espeak")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    for n in (int(x) for x in args.speakers.split(",")):
        conversation = compose(n, args.minutes, args.seed + n, args.overlap_rate, args.source)
        path = conversation.write(args.out)
        speech = sum(b - a for _, a, b in conversation.reference) / SR
        print(f"{path}: {len(conversation.audio) / SR:.1f} s, {n} speakers, {speech:.1f} s of speaker time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
