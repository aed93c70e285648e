"""Prometheus instruments of one server, in their own registry (several servers can live in one process)."""

from __future__ import annotations

from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
FINAL_STAGES = ("silence", "vad", "asr_wait", "send")  # what a final's latency is made of (FinalTrace)
TRACES_KEPT = 2000
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Every instrument the server updates; ``render()`` gives the ``/metrics`` body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = Gauge("rechka_sessions_active", "Streams open now", registry=r)
        self.sessions_total = Counter("rechka_sessions", "Streams started (after a valid start)", registry=r)
        self.connections_rejected = Counter(
            "rechka_connections_rejected", "Connections refused before the upgrade", ["reason"], registry=r)
        self.session_errors = Counter("rechka_session_errors", "Streams closed by an error", ["code"], registry=r)
        self.audio_received = Counter("rechka_audio_received_seconds", "Audio received from clients", registry=r)
        self.audio_processed = Counter("rechka_audio_processed_seconds", "Audio that went through VAD", registry=r)
        self.audio_dropped = Counter("rechka_audio_dropped_seconds", "Audio dropped under overload", registry=r)
        self.partials_dropped = Counter("rechka_partials_dropped", "Partial decodes skipped under lag", registry=r)
        self.overloaded = Counter("rechka_overloaded_warnings", "'overloaded' warnings sent", registry=r)
        self.read_pauses = Counter(
            "rechka_read_pauses", "Times a stream's socket stopped being read (backpressure on a fast client)",
            registry=r)
        self.model_busy = Counter("rechka_model_busy_seconds", "Wall time spent in run_batch", ["model"], registry=r)
        self.model_cpu = Counter(
            "rechka_model_cpu_seconds", "CPU time of the inference thread during run_batch (not counting a model's "
            "own extra intra-op threads)", ["model"], registry=r)
        self.real_time_factor = Gauge(
            "rechka_real_time_factor",
            "Model compute seconds per second of audio processed, since start (below 1 keeps up)", registry=r)
        self.real_time_factor.set_function(self._real_time_factor)
        self.time_to_first_partial = Histogram(
            "rechka_time_to_first_partial_seconds", "First audio received to first partial sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.final_latency = Histogram(
            "rechka_final_latency_seconds", "Last audio of an utterance received to its final sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("rechka_queue_depth", "Requests waiting in a batcher", ["model"], registry=r)
        self.batch_size = Histogram("rechka_batch_size", "Requests per model batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram("rechka_queue_wait_seconds", "Submit to model call start, per request",
                                    ["model", "priority"], buckets=WAIT_BUCKETS, registry=r)
        self.final_stage = Histogram(
            "rechka_final_stage_seconds", "A final's latency by stage: silence (the closing pause arriving), vad "
            "(the VAD seeing it), asr_wait (its ASR result after that), send (to the socket)", ["stage"],
            buckets=WAIT_BUCKETS, registry=r)
        self.final_traces: deque[dict[str, Any]] = deque(maxlen=TRACES_KEPT)  # the latest finals' breakdowns
        self.batch_failures = Counter("rechka_batch_failures", "run_batch calls that raised", ["model"], registry=r)
        self.calls_interrupted = Counter(
            "rechka_model_calls_interrupted", "Model calls stopped because every request of the batch was cancelled "
            "(a withdrawn speculative final)", ["model"], registry=r)
        self._busy_total = 0.0
        self._processed_total = 0.0

    def add_busy(self, model: str, seconds: float) -> None:
        self.model_busy.labels(model=model).inc(seconds)
        self._busy_total += seconds

    def add_final_trace(self, trace: dict[str, Any]) -> None:
        """One final's latency breakdown (``server.connection.final_trace``): the stage histograms and the ring."""
        for stage in FINAL_STAGES:
            value = trace.get(stage)
            if value is not None:
                self.final_stage.labels(stage=stage).observe(max(0.0, value))
        self.final_traces.append(trace)

    def add_processed(self, seconds: float) -> None:
        self.audio_processed.inc(seconds)
        self._processed_total += seconds

    def _real_time_factor(self) -> float:
        return self._busy_total / self._processed_total if self._processed_total > 0 else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
