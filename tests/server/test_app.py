"""server/app.py: the HTTP routes beside the websocket (health, ready, metrics, static page), TLS, start-up."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from server.__main__ import CannotStart, load, main, placement_dict
from server.app import RechkaServer, static_file
from server.config import DEFAULT_STATIC_DIR, ServerConfig
from server.connection import final_trace
from tests.server.conftest import (HttpReply, Received, http_get, metric_value, read_all, run, serving, stream,
                                  tones_audio)
from tests.server.fake_models import FAKE_PLACEMENT, fake_models

START = {"type": "start", "diarization": False}


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>rechka</title>", encoding="utf-8")
    (root / "js" / "app.js").write_text("export const x = 1;", encoding="utf-8")
    (root / "style.css").write_text("body{}", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("do not serve", encoding="utf-8")
    return root


def test_health_reports_liveness_and_the_audited_placement_of_every_model() -> None:
    placement = {**FAKE_PLACEMENT, "asr": {"device": "cuda:0", "dtypes": ["float16"], "parameters": 5}}

    async def main() -> HttpReply:
        async with serving(placement=placement) as server:
            return await http_get(server.port, "/health")

    reply = run(main())
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["status"] == "ok"
    assert body["models"]["asr"]["device"] == "cuda:0" and body["models"]["asr"]["dtypes"] == ["float16"]
    assert body["models"]["vad"] == {"name": "fake-vad", "checkpoint": None, "device": "cpu",
                                     "dtypes": ["float32"], "parameters": 0}


def test_ready_is_200_under_capacity_and_503_when_full() -> None:
    async def main() -> tuple[HttpReply, HttpReply, HttpReply]:
        async with serving(max_sessions=1) as server:
            before = await http_get(server.port, "/ready")
            async with connect(server.url) as ws:
                await ws.send(json.dumps(START))
                await ws.recv()
                full = await http_get(server.port, "/ready")
                await ws.send(json.dumps({"type": "stop"}))
                await read_all(ws, Received())
            await asyncio.sleep(0.05)  # the slot is freed when the TCP connection is gone
            after = await http_get(server.port, "/ready")
            return before, full, after

    before, full, after = run(main())
    assert before.status == 200 and before.json()["ready"] is True
    assert full.status == 503 and full.json() == {"ready": False, "sessions": 1, "max_sessions": 1,
                                                  "draining": False}
    assert int(full.headers["retry-after"]) > 0
    assert after.status == 200


def test_metrics_count_sessions_audio_latency_and_batches() -> None:
    audio = tones_audio([440, 660])

    async def main() -> HttpReply:
        async with serving() as server:
            await stream(server.url, audio, pace=0.005)
            return await http_get(server.port, "/metrics")

    reply = run(main())
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert metric_value(text, "rechka_sessions_total") == 1
    assert metric_value(text, "rechka_sessions_active") == 0
    assert metric_value(text, "rechka_audio_received_seconds_total") == pytest.approx(len(audio) / 32000, abs=0.01)
    assert 0 < metric_value(text, "rechka_audio_processed_seconds_total") <= len(audio) / 32000 + 0.05
    assert metric_value(text, "rechka_final_latency_seconds_count") == 2
    assert metric_value(text, "rechka_time_to_first_partial_seconds_count") == 1
    assert metric_value(text, "rechka_batch_size_count", 'model="asr"') >= 2
    assert metric_value(text, "rechka_real_time_factor") > 0
    for name in ("rechka_queue_depth", "rechka_partials_dropped_total"):
        assert name in text


def test_debug_finals_break_each_final_latency_into_stages_that_add_up() -> None:
    audio = tones_audio([440, 660])

    async def main() -> tuple[HttpReply, HttpReply]:
        async with serving() as server:
            await stream(server.url, audio, pace=0.005)
            return await http_get(server.port, "/debug/finals"), await http_get(server.port, "/metrics")

    reply, metrics = run(main())
    traces = reply.json()["finals"]
    assert reply.status == 200 and len(traces) == 2
    for t in traces:
        stages = [t[k] for k in ("silence", "vad", "asr_wait", "send")]
        assert min(stages) >= 0 and sum(stages) == pytest.approx(t["total"], abs=0.002)
        assert t["queued"] >= 0 and t["compute"] >= 0 and t["batch"] >= 1 and t["audio"] > 0
        assert t["beside_vad"] >= 0 and t["beside_asr"] >= 0 and "beside_asr_partials" in t  # what shared the cores
    assert metric_value(metrics.body.decode(), "rechka_final_stage_seconds_count", 'stage="asr_wait"') == 2
    assert metric_value(metrics.body.decode(), "rechka_queue_wait_seconds_count", 'model="asr",priority="final"') >= 2


def test_final_trace_charges_the_asr_only_for_what_comes_after_the_vad_closes() -> None:
    class Times:  # a TimedFuture's fields
        queued_at, started_at, finished_at, batch_size = 100.05, 100.1, 100.3, 2

    early = final_trace(100.0, 100.4, 100.42, Times(), 100.43)  # speculative: decoded before the VAD closed it
    assert (early["silence"], early["vad"], early["asr_wait"], early["send"]) == (0.4, 0.02, 0.0, 0.01)
    assert (early["submitted"], early["queued"], early["compute"], early["batch"]) == (0.05, 0.05, 0.2, 2.0)
    Times.finished_at = 101.0  # decoded after the close: the rest is ASR time
    late = final_trace(100.0, 100.4, 100.42, Times(), 101.01)
    assert (late["asr_wait"], late["send"], late["total"]) == (0.58, 0.01, 1.01)
    assert final_trace(100.0, 100.4, 100.3, None, 100.5)["vad"] == 0.0  # never before its pause arrived


def test_static_page_and_files_with_their_content_types(web_root: Path) -> None:
    async def main() -> list[HttpReply]:
        async with serving(static_dir=web_root) as server:
            return [await http_get(server.port, p) for p in ("/", "/static/js/app.js", "/static/style.css",
                                                             "/static/missing.js", "/nope")]

    index, js, css, missing, nope = run(main())
    assert index.status == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.body.startswith(b"<!doctype html>")
    assert js.status == 200 and js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert js.body == b"export const x = 1;"
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert missing.status == 404 and nope.status == 404


@pytest.mark.parametrize("path", ["/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2fsecret.txt",
                                  "/static/js/../../secret.txt", "/static//etc/passwd", "/static/%00",
                                  "/static/..\\secret.txt", "/static/"])
def test_no_directory_traversal(web_root: Path, path: str) -> None:
    async def main() -> HttpReply:
        async with serving(static_dir=web_root) as server:
            return await http_get(server.port, path)

    reply = run(main())
    assert reply.status == 404 and b"do not serve" not in reply.body
    assert static_file(web_root, path) is None


def test_unknown_paths_and_a_missing_page_are_404() -> None:
    async def main() -> list[int]:
        async with serving(static_dir=None) as server:
            return [(await http_get(server.port, p)).status for p in ("/", "/v2/stream", "/static/app.js")]

    assert run(main()) == [404, 404, 404]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_serves_wss_and_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    client = ssl.create_default_context(cafile=str(cert))

    async def main() -> tuple[Received, HttpReply, str]:
        async with serving(tls_cert=str(cert), tls_key=str(key)) as server:
            url = server.url.replace("127.0.0.1", "localhost")
            got = await stream(url, tones_audio([440]), ssl=client)
            health = await http_get(server.port, "/health", tls=client)
            return got, health, server.url

    got, health, url = run(main())
    assert url.startswith("wss://")
    assert got.final_words == ["w440"] and got.close_code == 1000
    assert health.status == 200 and health.json()["status"] == "ok"


def test_the_server_refuses_to_start_without_all_four_models() -> None:
    models = fake_models()
    del models["embedding"]
    with pytest.raises(ValueError, match="missing embedding"):
        RechkaServer(ServerConfig(port=0), models, FAKE_PLACEMENT)


def test_random_asr_weights_are_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    models = fake_models()
    models["asr"].describe = lambda: {"name": "tiny", "checkpoint": None, "random_weights": True}  # type: ignore
    report = {name: {"device": "cpu"} for name in models}
    import server.models.registry as registry
    monkeypatch.setattr(registry, "load_models", lambda config: (models, report))
    with pytest.raises(CannotStart, match="--allow-random-weights"):
        load(ServerConfig())
    loaded, placement = load(ServerConfig(allow_random_weights=True))
    assert loaded is models and placement["asr"] == {"device": "cpu"}


def test_a_missing_model_prints_its_paragraph_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import server.models.registry as registry
    from server.models.cache import ModelUnavailable

    def unavailable(config: Any) -> Any:
        raise ModelUnavailable("GigaAM weights are not in the cache. Run rechka-fetch-models to get them.")

    monkeypatch.setattr(registry, "load_models", unavailable)
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "Run rechka-fetch-models to get them." in err and "Traceback" not in err


def serve_fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` loads :func:`fake_models` (placed on the CPU) instead of the real ones."""
    import server.models.registry as registry

    models = fake_models()
    monkeypatch.setattr(registry, "load_models", lambda config: (models, {name: {"device": "cpu"} for name in models}))


def test_a_diarization_step_longer_than_the_models_window_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    serve_fake_models(monkeypatch)
    assert main(["--port", "0", "--allow-random-weights", "--diarization-step", "6"]) == 2
    err = capsys.readouterr().err
    assert "diarization step must be between 0.1 s and the window (5 s)" in err and "Traceback" not in err


def test_the_server_prints_the_diarization_step_it_resolved(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--diarization-step`` auto is 1 s with the segmentation model on the CPU; the start-up lines say so."""
    import uvloop

    serve_fake_models(monkeypatch)
    monkeypatch.setattr(uvloop, "run", lambda coroutine: coroutine.close())  # resolved and printed; not served
    assert main(["--port", "0", "--allow-random-weights"]) == 0
    assert "5 s windows every 1 s, latency 1.5 s" in capsys.readouterr().err
    assert main(["--port", "0", "--allow-random-weights", "--diarization-step", "0.5"]) == 0
    assert "5 s windows every 0.5 s, latency 1.5 s" in capsys.readouterr().err


def test_a_bad_option_exits_2_naming_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-sessions", "0"]) == 2
    assert "max_sessions must be >= 1" in capsys.readouterr().err


def test_placement_from_an_audit_entry() -> None:
    from server.models.audit import ModelPlacement
    entry = ModelPlacement("asr", ("cuda:0",), ("float16",), 1234, 10)
    assert placement_dict(entry) == {"device": "cuda:0", "dtypes": ["float16"], "parameters": 1234}


def test_python_dash_m_server_help_lists_the_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "server", "--help"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    for flag in ("--host", "--port", "--device", "--asr-model", "--segmentation-model", "--embedding-model",
                 "--max-sessions", "--max-message-bytes", "--idle-timeout", "--max-batch", "--max-wait-ms",
                 "--tokens-file", "--tls-cert", "--tls-key", "--shutdown-grace", "--allow-random-weights"):
        assert flag in out
    assert "RECHKA_" in out


@pytest.mark.skipif(not (DEFAULT_STATIC_DIR / "index.html").is_file(), reason="clients/web/ not present")
def test_the_browser_page_and_every_file_it_names_are_served_from_clients_web() -> None:
    async def main() -> tuple[HttpReply, dict[str, HttpReply]]:
        async with serving(static_dir=DEFAULT_STATIC_DIR) as server:
            index = await http_get(server.port, "/")
            names = re.findall(r'(?:src|href)="(/static/[^"]+)"', index.body.decode())
            return index, {name: await http_get(server.port, name) for name in names}

    index, files = run(main())
    assert index.status == 200 and index.headers["content-type"].startswith("text/html")
    assert files, "index.html names its scripts and styles under /static/"
    for name, reply in files.items():
        assert reply.status == 200, name
        kind = {".js": "text/javascript", ".css": "text/css"}.get(Path(name).suffix)
        assert kind is None or reply.headers["content-type"].startswith(kind), name
