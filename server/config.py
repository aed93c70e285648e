"""The server's options: command-line flags and ``RECHKA_*`` environment variables → one frozen :class:`ServerConfig`.

Every flag ``--some-option`` can also be set with the environment variable ``RECHKA_SOME_OPTION``; a flag wins over
the environment, the environment over the default. Tokens come from ``--tokens-file`` (one per line, ``#`` starts a
comment) and/or ``RECHKA_TOKENS`` (comma- or space-separated). Durations are in seconds here (the edge); the
streaming core gets samples.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from server.models.cache import EMBEDDING_REUSE, EMBEDDING_REUSE_DEFAULT, SEGMENTATION_DEFAULT, check_embedding_reuse
from server.models.gigaam_models import DEFAULT_MODEL, PUBLISHED
from streaming.config import SessionConfig

DEFAULT_STATIC_DIR = Path(__file__).resolve().parent.parent / "clients" / "web"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
CPU_DIARIZATION_STEP = 1.0  # seconds: the diarization step when the segmentation model runs on the CPU (#15 point 6)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``python -m server`` needs, validated at construction (``ValueError`` names the fix).

    device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    asr_model: a GigaAM model name (``server.models.gigaam_models.PUBLISHED``: ``v2_ctc``, ``v3_e2e_rnnt``, …) or a
        checkpoint path; docs/models.md says which to choose.
    asr_engine: ``auto`` (``onnx`` on the CPU, ``torch`` on CUDA), ``torch`` or ``onnx`` (the encoder on ONNX
        Runtime, :mod:`server.models.asr_onnx`). The CPU default is ONNX Runtime int8: 1.6-1.7x faster than torch fp32
        and 1.1-1.2x faster than torch's dynamic int8 in ``benchmarks/asr_engines.py`` (full-size v2, random weights),
        equal held-out CER on the tiny trained model; accuracy risk: int8 moves log-probs by up to ~0.03 (torch int8
        ~0.05), which can flip a near-tie between tokens — measure your data, ``--asr-quantize none`` keeps fp32.
    vad_engine: ``auto`` (``onnx`` on the CPU, ``torch`` on CUDA), ``torch`` or ``onnx`` (Silero VAD on ONNX
        Runtime, :mod:`server.models.vad_onnx`: equal probabilities, a fraction of torch's per-call CPU cost).
    diarization_engine: the same choice for segmentation (PyanNet checkpoints) and embeddings (resemblyzer, CAM++)
        (:mod:`server.models.diarization_onnx`); ``auto`` keeps models without an onnx engine on torch. The CPU
        default is ONNX Runtime: segmentation 1.2-1.6x and CAM++ 1.5-2.1x less CPU per call, resemblyzer 0.9-1.3x
        (``benchmarks/diarization_engines.py``); at 4 streams diarization 0.085-0.090 -> 0.059-0.064 CPU-s per
        stream-second; the same DER on pyannote's sample for all four model pairs (docs/benchmarks.md #14).
    embedding_reuse: ``none``, ``edge`` or ``grid``: resemblyzer's partials on one grid of the stream, reused across
        the windows that ask for the same speech (``edge``: only requests a window's first frame cut; 6.1 -> 3.5
        partials per stream-second, DER within noise on the development sets; ``grid``: every request, 2.7, but
        ``sample.wav`` DER .145 -> .277). Off by default: on held-out conversations ``edge`` was never worse in DER,
        but the 60-minute replay passed through more provisional labels (docs/benchmarks.md, stop 27).
    diarization_step: seconds between the segmentation windows of a live stream
        (:meth:`streaming.config.DiarizationOptions.at_step`; a step longer than the latency raises the latency).
        ``None`` (auto): ``CPU_DIARIZATION_STEP`` (1 s) when the segmentation model runs on the CPU, the diarizer's
        0.5 s on CUDA. On the CPU 1 s halves diarization's compute (4 streams: 0.078-0.092 -> 0.041-0.048 CPU-s per
        stream-second in stops 29-30, within #15's 0.05; 8 streams keep up on 2 cores instead of 5) for AMI DER .252 -> .258 and
        pyannote's sample .145 -> .223 (docs/benchmarks.md, "The CPU default: a 1 s step"); 0.5 keeps the finer one.
    asr_quantize: ``auto`` (``int8`` with the ONNX engine on the CPU, else ``none``), ``none`` or ``int8`` (CPU
        only: the ONNX graph's MatMuls, or torch's dynamic int8 Linear layers).
    max_sessions: concurrent streams; beyond it new connections get HTTP 503 with ``Retry-After``.
    max_message_bytes: largest websocket message accepted; a larger one closes the stream with 1009.
    idle_timeout: seconds without any client message before the server ends the stream (close 1001).
    cpu_inference_threads: models on the CPU run on this many threads, so different models overlap (2 suits a
        2-core machine); a GPU always has one inference thread.
    final_threads: intra-op threads of a GigaAM decode of finals only on the CPU (the ONNX engine: a second session
        of the same graph; the finals have a thread of their own and the background threads yield to them, so a final
        gets both cores of a 2-core machine while it runs).
    final_lanes: GigaAM finals decoded at once on the CPU: 1 runs them one at a time on ``final_threads``; 2 lets a
        queued final at most half as long as the decode running start beside it, on its own thread with
        ``model_threads`` (ONNX engine; ``server.batcher.SPILL_RATIO``): 4 streams p95 0.93-1.06 s vs 1.08-1.32 s at 1
        in four A/B pairs; spilling every waiting final was no better (both decodes slow down).
    background_nice: how many nice levels below the finals' and the VAD's the CPU threads running partial decodes
        and diarization run (Linux, per thread; at most nice 19), so a final does not share the cores with them; 0
        makes them equal. 19 was not better for finals in seven 4-stream runs (p95 0.94 / 0.91 / 1.34 s against
        1.11 / 1.16 / 1.11 / 0.97 s at 10) and made first partials later (p50 1.1-1.5 vs 0.95 s).
    model_threads: intra-op threads of one CPU model call (torch's and the ONNX encoder's); 1 with
        ``cpu_inference_threads`` 2 keeps a 2-core machine's cores one call each.
    max_batch / max_wait_ms: a batcher runs as soon as it has ``max_batch`` requests or its oldest request has
        waited ``max_wait_ms``.
    overload_lag: seconds (wall time) the oldest unprocessed audio may wait before a stream is warned ``overloaded``.
    shed_partials_wait: while the oldest queued GigaAM final (speculative ones too) has waited longer than this
        (seconds; on the CPU partial decodes queue apart and never count), every stream skips
        its partials and speculative finals (``Session.models_behind``), so GigaAM's time goes to finals; finals
        are never skipped.
    shutdown_grace: on SIGTERM, seconds open streams get to flush their finals before being closed.
    flush_timeout: after ``stop`` (or an idle timeout), seconds a stream's remaining finals may go without any
        model result (progress); beyond it the stream is closed 1013 ``overloaded``.
    model_timeout: a model call running longer than this makes ``/health`` answer 503 (the process is stuck).
    tokens: accepted bearer tokens; empty means no authentication.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    asr_model: str = DEFAULT_MODEL
    asr_quantize: Optional[str] = "auto"
    asr_engine: str = "auto"
    vad_engine: str = "auto"
    diarization_engine: str = "auto"
    segmentation_model: str = SEGMENTATION_DEFAULT
    embedding_model: str = "resemblyzer"
    embedding_reuse: str = EMBEDDING_REUSE_DEFAULT
    diarization_step: Optional[float] = None
    max_sessions: int = 32
    max_message_bytes: int = 1 << 20
    idle_timeout: float = 30.0
    max_batch: int = 16
    cpu_inference_threads: int = 2
    model_threads: int = 1
    final_threads: int = 2
    final_lanes: int = 2
    background_nice: int = 10
    max_wait_ms: float = 5.0
    overload_lag: float = 5.0
    shed_partials_wait: float = 1.0
    tokens: frozenset[str] = frozenset()
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    shutdown_grace: float = 10.0
    flush_timeout: float = 30.0
    model_timeout: float = 120.0
    allow_random_weights: bool = False
    static_dir: Optional[Path] = DEFAULT_STATIC_DIR
    log_level: str = "INFO"
    session: SessionConfig = field(default_factory=SessionConfig)

    def __post_init__(self) -> None:
        _check(bool(self.host), "ServerConfig.host must not be empty; use 0.0.0.0 to listen on every interface")
        _check(0 <= self.port <= 65535, "ServerConfig.port must be 0-65535 (0 picks a free port)")
        _check(bool(_DEVICE.match(self.device)), "ServerConfig.device must be auto, cpu, cuda or cuda:N")
        _check(bool(self.asr_model), f"ServerConfig.asr_model must name a GigaAM model ({DEFAULT_MODEL}) or a checkpoint path")
        _check(self.max_sessions >= 1, "ServerConfig.max_sessions must be >= 1")
        _check(1024 <= self.max_message_bytes <= 64 << 20,
               "ServerConfig.max_message_bytes must be between 1 KiB and 64 MiB (default 1 MiB)")
        _check(self.idle_timeout > 0, "ServerConfig.idle_timeout must be > 0 seconds (default 30)")
        _check(self.asr_quantize in (None, "int8", "auto"), "ServerConfig.asr_quantize must be auto, none or int8")
        _check(self.asr_engine in ("auto", "torch", "onnx"), "ServerConfig.asr_engine must be auto, torch or onnx")
        _check(self.vad_engine in ("auto", "torch", "onnx"), "ServerConfig.vad_engine must be auto, torch or onnx")
        _check(self.vad_engine != "onnx" or not self.device.startswith("cuda"),
               "ServerConfig.vad_engine=onnx needs --device cpu (use auto or torch on CUDA)")
        _check(self.diarization_engine in ("auto", "torch", "onnx"),
               "ServerConfig.diarization_engine must be auto, torch or onnx")
        _check(self.diarization_engine != "onnx" or not self.device.startswith("cuda"),
               "ServerConfig.diarization_engine=onnx needs --device cpu (use auto or torch on CUDA)")
        try:
            check_embedding_reuse(self.embedding_model, self.embedding_reuse)
        except ValueError as error:
            raise ValueError(f"ServerConfig.{error}") from None
        _check(self.diarization_step is None or 0.1 <= self.diarization_step <= 30.0,
               "ServerConfig.diarization_step must be 0.1-30 seconds and at most the segmentation window "
               "(default: 0.5; 1.0 halves diarization's compute)")
        _check(self.asr_quantize != "int8" or self.device == "cpu",
               "ServerConfig.asr_quantize=int8 needs --device cpu (on CUDA GigaAM runs fp16)")
        _check(1 <= self.cpu_inference_threads <= 64, "ServerConfig.cpu_inference_threads must be 1-64 (default 2)")
        _check(1 <= self.model_threads <= 64, "ServerConfig.model_threads must be 1-64 (default 1)")
        _check(1 <= self.final_threads <= 64, "ServerConfig.final_threads must be 1-64 (default 2)")
        _check(self.final_lanes in (1, 2), "ServerConfig.final_lanes must be 1 or 2 (default 2)")
        _check(0 <= self.background_nice <= 19, "ServerConfig.background_nice must be 0-19 (default 10; 0: equal)")
        _check(1 <= self.max_batch <= 1024, "ServerConfig.max_batch must be 1-1024 (default 16)")
        _check(0 <= self.max_wait_ms <= 1000, "ServerConfig.max_wait_ms must be 0-1000 ms (a few ms is typical)")
        _check(self.overload_lag > 0, "ServerConfig.overload_lag must be > 0 seconds (default 5)")
        _check(all(t and not any(c.isspace() for c in t) for t in self.tokens),
               "ServerConfig.tokens must be non-empty strings without whitespace")
        _check((self.tls_cert is None) == (self.tls_key is None),
               "ServerConfig: give both --tls-cert and --tls-key for wss, or neither for ws")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            _check(path is None or Path(path).is_file(), f"ServerConfig.{name}: file {path!r} does not exist")
        _check(self.shutdown_grace >= 0, "ServerConfig.shutdown_grace must be >= 0 seconds (default 10)")
        _check(self.flush_timeout > 0, "ServerConfig.flush_timeout must be > 0 seconds (default 30)")
        _check(self.model_timeout > 0, "ServerConfig.model_timeout must be > 0 seconds (default 120)")
        _check(self.shed_partials_wait > 0, "ServerConfig.shed_partials_wait must be > 0 seconds (default 1)")
        _check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
               "ServerConfig.log_level must be DEBUG, INFO, WARNING or ERROR")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def summary(self) -> dict[str, Any]:
        """The options as printable values (tokens are counted, never shown)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tokens":
                value = f"{len(value)} configured" if value else "none (no authentication)"
            elif f.name == "session":
                continue
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


# ------------------------------------------------------------------------------------------------ command line
_FLAGS: list[tuple[str, type, str]] = [
    ("host", str, "interface to listen on (default 127.0.0.1; 0.0.0.0 for all)"),
    ("port", int, "TCP port (default 8000; 0 picks a free one)"),
    ("device", str, "auto, cpu, cuda or cuda:N (default auto)"),
    ("asr_model", str, f"GigaAM model name ({', '.join(PUBLISHED)}) or checkpoint path (default {DEFAULT_MODEL})"),
    ("asr_engine", str, "auto, torch or onnx: GigaAM's encoder on PyTorch or ONNX Runtime (default auto: onnx on "
                        "the CPU, torch on CUDA)"),
    ("vad_engine", str, "auto, torch or onnx: Silero VAD on PyTorch or ONNX Runtime (default auto: onnx on the "
                        "CPU, torch on CUDA)"),
    ("diarization_engine", str, "auto, torch or onnx: segmentation and speaker embeddings on PyTorch or ONNX "
                                "Runtime (default auto: onnx on the CPU where the model has an onnx engine, torch "
                                "on CUDA)"),
    ("asr_quantize", str, "auto, none or int8: int8 GigaAM on the CPU (default auto: int8 with the onnx engine)"),
    ("segmentation_model", str, f"pyannote segmentation checkpoint name or path (default {SEGMENTATION_DEFAULT})"),
    ("embedding_model", str, "speaker embedding model (default resemblyzer)"),
    ("embedding_reuse", str, f"{', '.join(EMBEDDING_REUSE)}: resemblyzer's partials on one grid of the stream, "
                             f"reused across windows (default {EMBEDDING_REUSE_DEFAULT})"),
    ("diarization_step", float, "seconds between a live stream's segmentation windows (default: 1 with the "
                                "segmentation model on the CPU, 0.5 on CUDA; 0.5 on the CPU costs twice the "
                                "diarization CPU for a little less DER)"),
    ("max_sessions", int, "concurrent streams before HTTP 503 (default 32)"),
    ("max_message_bytes", int, "largest websocket message in bytes (default 1048576)"),
    ("idle_timeout", float, "seconds without a client message before the stream is ended (default 30)"),
    ("max_batch", int, "largest model batch (default 16)"),
    ("cpu_inference_threads", int, "threads running CPU models side by side (default 2; a GPU has one)"),
    ("model_threads", int, "intra-op threads of one CPU model call, torch's and ONNX Runtime's (default 1)"),
    ("final_threads", int, "intra-op threads of a GigaAM decode of finals on the CPU, ONNX engine (default 2)"),
    ("final_lanes", int, "GigaAM finals decoded at once on the CPU: 1 one at a time, 2 a waiting one at most half "
                         "as long beside the running one (default 2)"),
    ("background_nice", int, "nice levels below the finals' threads for partial decodes and diarization on the "
                             "CPU (default 10; 0: equal)"),
    ("max_wait_ms", float, "longest a request waits for batch-mates, in ms (default 5)"),
    ("overload_lag", float, "seconds the oldest unprocessed audio may wait before an 'overloaded' warning (default 5)"),
    ("shed_partials_wait", float, "seconds the oldest queued GigaAM final may wait before streams skip partials "
                                  "(default 1)"),
    ("tokens_file", str, "file with one accepted bearer token per line (also RECHKA_TOKENS=a,b)"),
    ("tls_cert", str, "PEM certificate: serve wss:// (needs --tls-key)"),
    ("tls_key", str, "PEM private key for --tls-cert"),
    ("shutdown_grace", float, "seconds to flush open streams on SIGTERM (default 10)"),
    ("flush_timeout", float, "seconds a stopped stream's finals may make no progress before close 1013 (default 30)"),
    ("model_timeout", float, "seconds one model call may run before /health answers 503 (default 120)"),
    ("static_dir", str, "folder served at / and /static/ (default clients/web; 'none' disables)"),
    ("log_level", str, "DEBUG, INFO, WARNING or ERROR (default INFO)"),
]
_BOOL_FLAGS: list[tuple[str, str]] = [
    ("allow_random_weights", "start even if the ASR model has random weights (testing only)"),
]


def env_name(option: str) -> str:
    return "RECHKA_" + option.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rechka-server",
        description="Real-time Russian speech transcription over websockets (protocol v1 at /v1/stream). "
                    "Every --flag can also be set as RECHKA_FLAG in the environment.")
    for name, kind, help_text in _FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            help=f"{help_text} [env {env_name(name)}]")
    for name, help_text in _BOOL_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None,
                            help=f"{help_text} [env {env_name(name)}=1]")
    return parser


def read_tokens(text: str) -> frozenset[str]:
    """Tokens from a tokens file's text: one per line, blank lines and ``#`` comments ignored."""
    tokens = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.add(line)
    return frozenset(tokens)


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{env_name(name)} must be 1/0, true/false, yes/no or on/off, not {text!r}")


def config_from_args(argv: Optional[Sequence[str]] = None,
                     environ: Optional[Mapping[str, str]] = None) -> ServerConfig:
    """Parse flags (``argv``, default ``sys.argv[1:]``) over ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for name, kind, _ in _FLAGS:
        value = getattr(args, name)
        if value is None and env_name(name) in environ:
            raw = environ[env_name(name)]
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{env_name(name)}={raw!r} is not a valid {kind.__name__}") from None
        if value is not None:
            values[name] = value
    for name, _ in _BOOL_FLAGS:
        value = getattr(args, name)
        if value is None and env_name(name) in environ:
            value = _parse_bool(name, environ[env_name(name)])
        if value is not None:
            values[name] = value

    tokens: set[str] = set()
    tokens_file = values.pop("tokens_file", None)
    if tokens_file is not None:
        try:
            tokens |= read_tokens(Path(tokens_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"--tokens-file {tokens_file!r} cannot be read ({exc.strerror}); "
                             "give a file with one token per line") from None
        if not tokens:
            raise ValueError(f"--tokens-file {tokens_file!r} holds no token; put one token per line")
    if environ.get("RECHKA_TOKENS"):
        tokens |= {t for t in re.split(r"[,\s]+", environ["RECHKA_TOKENS"]) if t}
    values["tokens"] = frozenset(tokens)

    if isinstance(values.get("asr_quantize"), str) and values["asr_quantize"].lower() == "none":
        values["asr_quantize"] = None
    static_dir = values.pop("static_dir", None)
    if static_dir is not None:
        values["static_dir"] = None if static_dir.lower() == "none" else Path(static_dir)
    return ServerConfig(**values)
