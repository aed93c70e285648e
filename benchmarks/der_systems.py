"""The systems ``benchmarks/der.py`` compares, on the same segmentation and embedding models: rechka's streaming
diarizer (fed in 1 s chunks), pyannote.audio's offline pipeline and diart 0.9 (in its own interpreter)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pickle
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from server.models.cache import EMBEDDING_DEFAULT, EMBEDDING_REUSE_DEFAULT, SEGMENTATION_3, SEGMENTATION_DEFAULT
from server.offline import drive_diarizer
from streaming.config import SAMPLE_RATE, DiarizationOptions, ms
from streaming.diarization import StreamingDiarizer
from streaming.work import Request, Result, SegmentationRequest

ROOT = Path(__file__).resolve().parent.parent
CHUNK = SAMPLE_RATE  # audio is fed to the diarizer in 1 s chunks


class Models:
    """The segmentation and embedding adapters (by ``--segmentation-model`` / ``--embedding-model`` name), loaded
    once, with compute counters and a result cache.

    The cache maps (model, request kind, audio) to the model's output, so a second run over the same audio (another
    latency, other tracking thresholds: neither changes what is asked) costs no model compute; ``cache_file``
    keeps it across runs (:func:`save_cache`). Counters and ``cpu_s`` count only requests actually computed.
    """

    def __init__(self, device: str = "cpu", segmentation: str = SEGMENTATION_DEFAULT,
                 embedding: str = EMBEDDING_DEFAULT, cache_file: Optional[Path] = None, engine: str = "torch",
                 reuse: str = EMBEDDING_REUSE_DEFAULT) -> None:
        from server.models.diarization_onnx import load_embedding, load_segmentation

        self.names = (segmentation, embedding)
        self.segmentation = load_segmentation(segmentation, device, 32, engine)
        self.embedding = load_embedding(embedding, device, 32, engine, reuse=reuse)
        self.cache_file = cache_file
        # an adapter that reuses a stream's earlier partials (ResemblyzerEmbedding.reuse_partials) answers the same
        # audio differently after other requests: its results are computed every run (cheap), never cached
        self._uncached = {"emb"} if getattr(self.embedding, "reuse", None) is not None else set()
        self._cache: dict[tuple[str, bytes], Any] = {}
        self._computed: dict[tuple[str, bytes], Any] = {}  # what this process added: all that save() writes
        if cache_file is not None and cache_file.is_file():
            self._cache = pickle.loads(cache_file.read_bytes())
        self.reset_counters()

    @property
    def tag(self) -> str:
        """``seg+emb`` short names for system labels (``pyannet``/``seg30``, ``resemblyzer``/``campplus``)."""
        segmentation, embedding = self.names
        return f"{SHORT.get(segmentation, segmentation)}+{SHORT.get(embedding, embedding)}"

    def reset_counters(self) -> None:
        self.windows = 0
        self.embeddings = 0
        self.embedded_samples = 0
        self.cpu_s = 0.0

    def run(self, requests: list[Request]) -> list[Result]:
        results: dict[int, Result] = {}
        todo: dict[str, list[Request]] = {"seg": [], "emb": []}
        for r in requests:
            kind = "seg" if isinstance(r, SegmentationRequest) else "emb"
            hit = None if kind in self._uncached else self._cache.get((kind, _key(r.audio)))
            if hit is None:
                todo[kind].append(r)
            else:
                results[r.seq] = dataclasses.replace(hit, session_id=r.session_id, seq=r.seq)
        started = time.process_time()
        for kind, model in (("seg", self.segmentation), ("emb", self.embedding)):
            for batch in _batches(todo[kind], model.max_batch):
                for request, result in zip(batch, model.run_batch(batch)):
                    results[request.seq] = result
                    if kind not in self._uncached:
                        self._cache[(kind, _key(request.audio))] = self._computed[(kind, _key(request.audio))] = result
        self.cpu_s += time.process_time() - started
        self.windows += len(todo["seg"])
        self.embeddings += len(todo["emb"])
        self.embedded_samples += sum(len(r.audio) for r in todo["emb"])
        return [results[r.seq] for r in requests]

    def save(self) -> None:
        if self.cache_file is not None:
            save_cache(self.cache_file, self._computed)


def save_cache(path: Path, computed: dict[tuple[str, bytes], Any]) -> bool:
    """Add ``computed`` to the cache file at ``path``: merged into what the file holds *now* (another run may have
    saved since this one loaded it) and replaced atomically (a run loading it meanwhile reads the old or the new
    file, never half of one); nothing is written when nothing was computed. True when the file was written."""
    if not computed:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = pickle.loads(path.read_bytes()) if path.is_file() else {}
    cache.update(computed)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(handle, 0o644)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(pickle.dumps(cache))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


SHORT = {SEGMENTATION_DEFAULT: "pyannet", SEGMENTATION_3: "seg30"}


def _key(audio: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(audio, np.float32).tobytes()).digest() + len(audio).to_bytes(8, "little")


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_rechka(audio: np.ndarray, options: DiarizationOptions, run: Callable[[list[Request]], list[Result]],
               chunk: int = CHUNK, merges: Optional[list] = None) -> list[tuple[str, float, float]]:
    """Stream ``audio`` through a diarizer in ``chunk``-sample pieces, answering each request batch at once; the
    turns bear the labels after every speaker merge, as a client shows them (unless ``merges``, a list, collects
    the merges: then the turns are as sent, see :func:`server.offline.drive_diarizer`)."""
    seq = itertools.count()
    diarizer = StreamingDiarizer(options, "der", 0, lambda: next(seq))
    turns = drive_diarizer(diarizer, _Buffer(), audio, run, chunk, merges)
    return [(t.speaker, t.start / SAMPLE_RATE, t.end / SAMPLE_RATE) for t in turns]


class _Buffer:
    """The part of ``streaming.audio.AudioBuffer`` the diarizer reads."""

    def __init__(self) -> None:
        self.data = np.zeros(0, np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, x: np.ndarray) -> None:
        self.data = np.concatenate([self.data, x])

    def read(self, a: int, b: int) -> np.ndarray:
        return self.data[a - self.start:b - self.start].copy()

    def discard_before(self, n: int) -> None:
        n = min(max(n, self.start), self.end)
        self.data, self.start = self.data[n - self.start:], n


class _AdapterForPyannote:
    """What pyannote's ``SpeakerDiarization`` needs from an embedding model, backed by rechka's adapter (resemblyzer
    or CAM++: ``prepare`` + ``embed``): ``(waveforms (B, 1, N), masks (B, F)) -> (B, D)``, the masked samples of
    each row embedded (NaN when too few)."""

    sample_rate = SAMPLE_RATE
    metric = "cosine"
    min_num_samples = ms(500)

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.dimension = int(adapter.describe()["dimension"])
        self.samples = 0

    def __call__(self, waveforms: Any, masks: Any = None) -> np.ndarray:
        audio = waveforms[:, 0].cpu().numpy()
        out = np.full((len(audio), self.dimension), np.nan, np.float32)
        chosen, rows = [], []
        for row, (x, mask) in enumerate(zip(audio, masks.cpu().numpy())):
            keep = np.repeat(mask > 0.5, int(np.ceil(len(x) / len(mask))))[:len(x)]
            if keep.sum() >= self.min_num_samples:
                chosen.append(x[keep[:len(x)]])
                rows.append(row)
        if chosen:
            out[rows] = self.adapter.embed([self.adapter.prepare(x) for x in chosen])
            self.samples += sum(len(x) for x in chosen)
        return out


def offline_pipeline(models: Models, threshold: float, repeat_short: bool = True) -> Any:
    """pyannote.audio's ``SpeakerDiarization`` on the same segmentation and embedding models, agglomerative
    clustering; ``repeat_short=False`` (resemblyzer only) embeds audio under 1.6 s zero-padded (``embed_utterance``)
    rather than repeated."""
    from server.models.cache import load_pyannote_model
    from server.models.embedding import ResemblyzerEmbedding
    from pyannote.audio.core.io import Audio
    from pyannote.audio.pipelines import speaker_diarization
    from pyannote.audio.pipelines.clustering import AgglomerativeClustering

    # the pipeline needs pyannote's own Model class: the same checkpoint as rechka's adapter (equal scores, tested)
    segmentation, _ = load_pyannote_model(models.segmentation.checkpoint, "segmentation")
    get_plda = speaker_diarization.get_plda
    speaker_diarization.get_plda = lambda *args, **kwargs: None  # no PLDA: agglomerative clustering needs none
    try:
        pipeline = speaker_diarization.SpeakerDiarization(
            segmentation=segmentation, segmentation_step=0.1, embedding_exclude_overlap=True,
            plda="none", clustering="OracleClustering", segmentation_batch_size=32, embedding_batch_size=32)
    finally:
        speaker_diarization.get_plda = get_plda
    # swap in rechka's embedding adapter and a clustering that needs no PLDA (the pipeline only builds hub embeddings itself)
    adapter = models.embedding if repeat_short else ResemblyzerEmbedding(models.embedding.device, repeat_short=False)
    pipeline._embedding = _AdapterForPyannote(adapter)
    pipeline._audio = Audio(sample_rate=SAMPLE_RATE, mono="downmix")
    pipeline.klustering = "AgglomerativeClustering"
    pipeline.clustering = AgglomerativeClustering(metric="cosine")
    pipeline._expects_num_speakers = False
    segmentation = {"min_duration_off": 0.0} if models.segmentation.powerset is not None else \
        {"threshold": 0.5, "min_duration_off": 0.0}  # a powerset model's activity needs no threshold
    pipeline.instantiate({"segmentation": segmentation,
                          "clustering": {"method": "centroid", "min_cluster_size": 6, "threshold": threshold}})
    return pipeline


def run_offline(pipeline: Any, audio: np.ndarray) -> list[tuple[str, float, float]]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = pipeline({"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE, "uri": "file"})
    annotation = getattr(output, "speaker_diarization", output)
    return [(str(label), s.start, s.end) for s, _, label in annotation.itertracks(yield_label=True)]


def run_diart(wavs: Sequence[Path], latency: float, python: Path, delta_new: float, tau_active: float,
              rho_update: float, repeat_short: bool = True,
              models: Optional[Models] = None) -> dict[str, list[tuple[str, float, float]]]:
    """diart 0.9 on the same checkpoints (``models``' pair; default PyanNet + resemblyzer), in its own interpreter
    (``benchmarks/diart_runner.py``), with the segmentation model's window as diart's duration; one latency."""
    found = _diart_runner(wavs, ["--latency", str(_diart_latency(latency, models))], python, delta_new, tau_active,
                          rho_update, repeat_short, models)
    return {path: [(t[0], t[1], t[2]) for t in turns] for path, turns in found["turns"].items()}


def run_diart_latencies(wavs: Sequence[Path], latencies: Sequence[float], python: Path, delta_new: float,
                        tau_active: float, rho_update: float, repeat_short: bool = True,
                        models: Optional[Models] = None) -> dict[float, dict[str, list[tuple[str, float, float]]]]:
    """:func:`run_diart` at several latencies from one model pass (``diart_runner.py --latencies``: each latency's
    own unmodified pipeline, the model blocks' outputs shared; equal to separate runs, see
    ``benchmarks/diart_latencies_check.py``), per requested latency."""
    effective = {latency: _diart_latency(latency, models) for latency in latencies}
    found = _diart_runner(wavs, ["--latencies", ",".join(str(x) for x in dict.fromkeys(effective.values()))],
                          python, delta_new, tau_active, rho_update, repeat_short, models)
    by_latency = found["by_latency"]
    return {latency: {path: [(t[0], t[1], t[2]) for t in turns]
                      for path, turns in by_latency[f"{effective[latency]:g}"].items()} for latency in latencies}


def _diart_latency(latency: float, models: Optional[Models]) -> float:
    """diart's latency for a requested one: at most its chunk duration (the segmentation model's window)."""
    return min(latency, _diart_duration(models))


def _diart_duration(models: Optional[Models]) -> float:
    return models.segmentation.window / SAMPLE_RATE if models is not None else 5.0


def _diart_runner(wavs: Sequence[Path], latency_args: list[str], python: Path, delta_new: float, tau_active: float,
                  rho_update: float, repeat_short: bool, models: Optional[Models]) -> dict[str, Any]:
    """Run ``benchmarks/diart_runner.py`` in diart's interpreter; its JSON output."""
    from server.models.cache import fetch_segmentation_checkpoint

    segmentation = models.segmentation.checkpoint if models is not None else str(fetch_segmentation_checkpoint())
    embedding = ["--embedding", models.names[1], "--embedding-checkpoint", models.embedding.checkpoint] \
        if models is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "diart.json"
        command = [str(python), str(ROOT / "benchmarks" / "diart_runner.py"), "--segmentation", segmentation,
                   "--duration", str(_diart_duration(models)), *embedding, *latency_args,
                   "--delta-new", str(delta_new),
                   "--tau-active", str(tau_active), "--rho-update", str(rho_update), "--out", str(out),
                   *([] if repeat_short else ["--zero-pad-short"]), *[str(wav) for wav in wavs]]
        env = dict(os.environ, PYTHONPATH="", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"diart_runner failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())
