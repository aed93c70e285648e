"""Shared pieces of the load and long-session benchmarks.

- an audio corpus: the real recordings of ``shared/speech`` (or espeak-ng Russian when absent) joined with pauses;
- :func:`stream_session`: one protocol-v1 client that paces audio at (a multiple of) real time and timestamps
  every chunk it sends and every event it receives, and :func:`analyze_session` turning that log into latencies;
- maths: :func:`percentile`, :func:`summarize`, :func:`linear_fit`, :class:`CapacitySearch`;
- output: :func:`plot_panels` (matplotlib Agg), :func:`asr_weights`, :func:`write_json`.

The server process, resource sampling and ``/metrics`` parsing live in ``benchmarks/server_process.py``.

Inside the benchmarks, times are ``time.monotonic()`` seconds and audio positions are samples at 16 kHz; the
protocol's seconds are converted once, in :func:`analyze_session`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from streaming.config import SAMPLE_RATE  # noqa: F401  (the benchmarks import it from here)

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "benchmarks" / "out"


def default_speech_dir() -> Path:
    """``$RECHKA_SPEECH_DIR``, else ``shared/speech`` beside the repository."""
    return Path(os.environ.get("RECHKA_SPEECH_DIR", REPO_ROOT.parent / "shared" / "speech"))


# ----------------------------------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class Corpus:
    """16-bit mono audio at 16 kHz made of clips separated by pauses; ``clips`` are their ``(start, end)`` samples."""

    audio: np.ndarray
    clips: tuple[tuple[int, int], ...]
    source: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def excerpt(self, offset: int, length: int) -> np.ndarray:
        """``length`` samples from ``offset``, wrapping around (the corpus loops)."""
        n = len(self.audio)
        idx = (np.arange(length, dtype=np.int64) + offset) % n
        return self.audio[idx]


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV as int16 mono at 16 kHz (channels averaged, other rates resampled with soxr)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (convert with sox -b 16)")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, rate, SAMPLE_RATE)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def compose(clips: Sequence[np.ndarray], pause: tuple[float, float], seed: int, source: str) -> Corpus:
    """Join clips, each preceded by a random pause of ``pause`` seconds (uniform), into one :class:`Corpus`."""
    if not clips:
        raise ValueError("compose() needs at least one clip")
    if not 0 <= pause[0] <= pause[1]:
        raise ValueError("pause must be (low, high) seconds with 0 <= low <= high")
    rng = random.Random(seed)
    parts: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for clip in clips:
        gap = np.zeros(int(rng.uniform(*pause) * SAMPLE_RATE), dtype=np.int16)
        parts += [gap, clip.astype(np.int16)]
        pos += len(gap)
        spans.append((pos, pos + len(clip)))
        pos += len(clip)
    return Corpus(np.concatenate(parts), tuple(spans), source)


def speech_corpus(speech_dir: Optional[Path] = None, seed: int = 0, pause: tuple[float, float] = (0.8, 2.0)) -> Corpus:
    """``ru/*.wav`` and ``speakers/*.wav`` of the shared recordings in a seeded random order, or espeak-ng Russian."""
    root = speech_dir or default_speech_dir()
    paths = sorted(root.glob("ru/*.wav")) + sorted(root.glob("speakers/*.wav"))
    if not paths:
        return espeak_corpus(seed=seed, pause=pause)
    random.Random(seed).shuffle(paths)
    return compose([read_wav(p) for p in paths], pause, seed, f"{root} ({len(paths)} clips)")


ESPEAK_SENTENCES = (
    "Добрый день, меня зовут Анна, я звоню по поводу заказа номер двадцать три.",
    "Проверьте, пожалуйста, когда будет доставка и сколько она стоит.",
    "Сегодня в Москве облачно, вечером ожидается небольшой дождь.",
    "Один, два, три, четыре, пять, шесть, семь, восемь, девять, десять.",
    "Мы обсудили план на следующую неделю и распределили задачи.",
    "Перезвоните мне завтра после обеда, я буду на месте.",
    "Поезд прибывает на второй путь через пятнадцать минут.",
    "Спасибо за ожидание, ваш вопрос передан специалисту.",
)
ESPEAK_VOICES = ("ru", "ru+m3", "ru+f2", "ru+m5", "ru+f4")


def espeak_corpus(seed: int = 0, pause: tuple[float, float] = (0.8, 2.0), repeats: int = 2) -> Corpus:
    """Russian sentences spoken by espeak-ng in several voices (the fallback when no recordings are present)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("no recordings in shared/speech and espeak-ng is not installed (apt-get install espeak-ng)")
    rng = random.Random(seed)
    clips: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats * len(ESPEAK_SENTENCES)):
            wav = Path(tmp) / f"{i}.wav"
            voice = ESPEAK_VOICES[i % len(ESPEAK_VOICES)]
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.randint(140, 190)), "-w", str(wav),
                            ESPEAK_SENTENCES[i % len(ESPEAK_SENTENCES)]], check=True, capture_output=True)
            clips.append(read_wav(wav))
    return compose(clips, pause, seed, f"espeak-ng ({len(clips)} sentences)")


# ----------------------------------------------------------------------------------------------------- client
@dataclass
class StreamLog:
    """What one client saw: when each chunk left (``marks``: cumulative samples, send time) and each event arrived."""

    audio_samples: int
    speed: float
    marks: list[tuple[int, float]] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    ready: Optional[dict[str, Any]] = None
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    close_code: Optional[int] = None
    error: Optional[str] = None


async def stream_session(url: str, audio: np.ndarray, *, speed: float = 1.0, chunk: int = 800,
                         start: Optional[dict[str, Any]] = None, token: Optional[str] = None,
                         open_timeout: float = 30.0, finish_timeout: float = 120.0,
                         on_chunk: Optional[Callable[[int], None]] = None) -> StreamLog:
    """Stream int16 ``audio`` over protocol v1: ``start``, paced binary chunks, ``stop``; wait for ``end``.

    Chunk ``[a, b)`` is sent when its last sample would have been captured: ``b / (16000 * speed)`` seconds after
    the first chunk's time origin (taken when ``ready`` arrives). Errors end up in ``StreamLog.error``.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    log = StreamLog(audio_samples=len(audio), speed=speed)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    pcm = np.ascontiguousarray(audio, dtype="<i2").tobytes()
    try:
        async with connect(url, open_timeout=open_timeout, max_size=None, additional_headers=headers,
                           ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", **(start or {})}))
            first = json.loads(await asyncio.wait_for(ws.recv(), open_timeout))
            if first.get("type") != "ready":
                log.error = f"expected ready, got {first}"
                return log
            log.ready = first
            receiver = asyncio.create_task(_receive(ws, log))
            log.t_start = t0 = time.monotonic()
            for a in range(0, len(audio), chunk):
                b = min(len(audio), a + chunk)
                delay = t0 + b / (SAMPLE_RATE * speed) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if receiver.done():
                    break
                sent_at = time.monotonic()
                await ws.send(pcm[2 * a:2 * b])
                log.marks.append((b, sent_at))
                if on_chunk is not None:
                    on_chunk(b)
            if not receiver.done():
                await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, finish_timeout)
    except (OSError, WebSocketException, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        log.error = log.error or f"{type(exc).__name__}: {exc}"
    return log


async def _receive(ws: Any, log: StreamLog) -> None:
    """Timestamp every event until the server closes; an abnormal close is recorded, never raised."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            if isinstance(message, bytes):
                continue
            now = time.monotonic()
            event = json.loads(message)
            log.events.append((now, event))
            if event.get("type") == "end":
                log.t_end = now
            elif event.get("type") == "error":
                log.error = f"{event.get('code')}: {event.get('message')}"
    except ConnectionClosed as exc:
        log.error = log.error or f"connection closed: {exc}"
    log.close_code = ws.close_code


def sent_time(log: StreamLog, sample: int) -> Optional[float]:
    """When the chunk holding sample ``sample - 1`` (the last one before ``sample``) was sent; None if never."""
    if not log.marks:
        return None
    ends = np.fromiter((m[0] for m in log.marks), dtype=np.int64, count=len(log.marks))
    i = int(np.searchsorted(ends, max(sample, 1), side="left"))
    return log.marks[i][1] if i < len(ends) else None


def analyze_session(log: StreamLog) -> dict[str, Any]:
    """Per-session measurements from a :class:`StreamLog` (seconds; ``*_at`` are monotonic arrival times).

    final latency: arrival of a final − send time of the chunk holding its ``end`` (``final_end_s``: that ``end``
    in audio seconds); first partial: first partial of an utterance − send time of its ``start``; cadence: gaps
    between partials of one utterance; lag: arrival − send time of ``end`` for every partial and final (its slope
    over the run shows a growing backlog).
    """
    out: dict[str, Any] = {"final_latency": [], "final_at": [], "final_end_s": [], "first_partial": [],
                           "partial_interval": [], "lag": [], "lag_at": [], "partials": 0, "finals": 0,
                           "partials_dropped": 0, "overloaded": 0, "audio_dropped_s": 0.0}
    last_partial: dict[int, float] = {}
    for at, ev in log.events:
        kind = ev.get("type")
        if kind in ("partial", "final"):
            sent = sent_time(log, int(round(ev["end"] * SAMPLE_RATE)))
            if sent is not None:
                out["lag"].append(at - sent)
                out["lag_at"].append(at)
        if kind == "partial":
            out["partials"] += 1
            uid = ev["utterance_id"]
            if uid in last_partial:
                out["partial_interval"].append(at - last_partial[uid])
            else:
                began = sent_time(log, int(round(ev["start"] * SAMPLE_RATE)) + 1)
                if began is not None:
                    out["first_partial"].append(at - began)
            last_partial[uid] = at
        elif kind == "final":
            out["finals"] += 1
            sent = sent_time(log, int(round(ev["end"] * SAMPLE_RATE)))
            if sent is not None:
                out["final_latency"].append(at - sent)
                out["final_at"].append(at)
                out["final_end_s"].append(float(ev["end"]))
        elif kind == "warning":
            code = ev.get("code")
            if code in ("partials_dropped", "overloaded"):
                out[code] += 1
            elif code == "audio_dropped":
                out["audio_dropped_s"] += float(ev.get("dropped_seconds") or 0.0)
    audio_s = log.audio_samples / SAMPLE_RATE
    done = log.t_end is not None and log.error is None
    out["completed"] = done
    out["error"] = log.error
    out["wall_per_audio"] = round((log.t_end - log.t_start) / audio_s, 4) if done and log.t_start and audio_s else None
    return out


# ----------------------------------------------------------------------------------------------------- maths
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The ``q``-th percentile (0-100, linear interpolation); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def summarize(values: Sequence[float]) -> dict[str, Optional[float]]:
    """n, mean, p50, p95, p99 and max of ``values`` (rounded to ms; None when empty)."""
    if not len(values):
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    v = np.asarray(values, dtype=np.float64)
    r = lambda x: round(float(x), 3)  # noqa: E731
    return {"n": len(v), "mean": r(v.mean()), "p50": r(np.percentile(v, 50)), "p95": r(np.percentile(v, 95)),
            "p99": r(np.percentile(v, 99)), "max": r(v.max())}


def linear_fit(x: Sequence[float], y: Sequence[float]) -> Optional[tuple[float, float]]:
    """Least-squares ``(slope, intercept)`` of y on x; None with fewer than 2 points or no spread in x."""
    if len(x) != len(y):
        raise ValueError("x and y must have the same length")
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xa) < 2 or np.ptp(xa) == 0:
        return None
    slope, intercept = np.polyfit(xa - xa[0], ya, 1)  # centred for conditioning (monotonic clocks are large)
    return float(slope), float(intercept - slope * xa[0])


class CapacitySearch:
    """Largest passing stream count: double from ``start`` until a failure (or ``limit``), then bisect.

    Assumes passing is monotone in the stream count. ``next()`` is None when the answer (``best``) is known.
    """

    def __init__(self, start: int = 1, limit: int = 4096) -> None:
        if not 1 <= start <= limit:
            raise ValueError("CapacitySearch needs 1 <= start <= limit")
        self.start, self.limit = start, limit
        self.best = 0  # largest count that passed
        self.failed: Optional[int] = None  # smallest count that failed
        self.tried: list[tuple[int, bool]] = []

    def next(self) -> Optional[int]:
        if self.failed is None:
            if not self.tried:
                return self.start
            if self.best >= self.limit:
                return None
            return min(self.best * 2, self.limit)
        low = self.best if self.best else 0
        if self.failed - low <= 1:
            return None
        return (low + self.failed) // 2

    def record(self, streams: int, passed: bool) -> None:
        self.tried.append((streams, passed))
        if passed:
            self.best = max(self.best, streams)
        elif self.failed is None or streams < self.failed:
            self.failed = streams
        if self.failed is not None and self.best >= self.failed:
            raise ValueError(f"non-monotone results: {self.best} streams passed but {self.failed} failed")


# ----------------------------------------------------------------------------------------------------- output
def plot_panels(path: Path, title: str, panels: Sequence[dict[str, Any]]) -> Path:
    """Line plots side by side, saved as PNG (matplotlib Agg).

    Each panel: ``x``, ``series`` ({label: ys, None = gap}), ``xlabel``, ``ylabel``, optional ``hline``
    ((label, y)), ``marker`` (default "o"; "" for dense series) and ``logx``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, ys in panel["series"].items():
            y = [np.nan if v is None else v for v in ys]
            ax.plot(panel["x"], y, marker=panel.get("marker", "o"), markersize=3, linewidth=1.2, label=label)
        if panel.get("hline"):
            ax.axhline(panel["hline"][1], color="red", linestyle="--", linewidth=1, label=panel["hline"][0])
        if panel.get("logx"):
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(panel["x"]), [str(v) for v in panel["x"]])
            ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def asr_weights(ready: Optional[dict[str, Any]]) -> str:
    """``"random"`` when the server's ``ready`` message says the ASR model has random weights, else ``"trained"``."""
    asr = ((ready or {}).get("models") or {}).get("asr") or {}
    return "random" if isinstance(asr, dict) and asr.get("random_weights") else "trained"


def command_line(module: str) -> str:
    """How this run was started, as a ``python -m benchmarks.<module> ...`` line to paste."""
    return " ".join(["python -m benchmarks." + module, *(shlex.quote(a) for a in sys.argv[1:])])


def write_result(name: str, result: dict[str, Any], out_dir: Path, stamp: Optional[str] = None) -> Path:
    """``out_dir/<name>-<stamp>.json`` (UTF-8, indented); also printed to stdout."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{stamp}.json"
    text = json.dumps(result, ensure_ascii=False, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    return path
