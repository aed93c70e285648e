"""The server-side helpers of the benchmarks: /metrics parsing and deltas, resource sampling, start-up failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from benchmarks.server_process import (ResourceSampler, ServerProcess, counter_delta, histogram_delta,
                                       histogram_quantile, jemalloc_library, parse_prometheus, pid_listening_on)

TINY_ASR = Path(__file__).parents[1] / "assets" / "tiny_gigaam_ctc.ckpt"

BEFORE = """\
# HELP rechka_batch_size Requests per model batch.
# TYPE rechka_batch_size histogram
rechka_batch_size_bucket{model="asr",le="1.0"} 2.0
rechka_batch_size_bucket{model="asr",le="+Inf"} 4.0
rechka_batch_size_count{model="asr"} 4.0
rechka_batch_size_sum{model="asr"} 10.0
rechka_batch_size_bucket{model="vad",le="+Inf"} 0.0
rechka_batch_size_count{model="vad"} 0.0
rechka_batch_size_sum{model="vad"} 0.0
# HELP rechka_sessions_active Open sessions.
# TYPE rechka_sessions_active gauge
rechka_sessions_active 1.0
"""

AFTER = BEFORE.replace('rechka_batch_size_count{model="asr"} 4.0', 'rechka_batch_size_count{model="asr"} 14.0') \
    .replace('rechka_batch_size_sum{model="asr"} 10.0', 'rechka_batch_size_sum{model="asr"} 40.0') \
    .replace('rechka_batch_size_count{model="vad"} 0.0', 'rechka_batch_size_count{model="vad"} 5.0') \
    .replace('rechka_batch_size_sum{model="vad"} 0.0', 'rechka_batch_size_sum{model="vad"} 35.0') \
    .replace("rechka_sessions_active 1.0", "rechka_sessions_active 3.0")


def test_histogram_delta_gives_per_model_means_between_scrapes() -> None:
    before, after = parse_prometheus(BEFORE), parse_prometheus(AFTER)
    delta = histogram_delta(before, after, "rechka_batch_size")
    assert delta["model=asr"] == {"count": 10.0, "sum": 30.0, "mean": 3.0}
    assert delta["model=vad"] == {"count": 5.0, "sum": 35.0, "mean": 7.0}
    assert histogram_delta(after, after, "rechka_batch_size")["model=vad"]["mean"] is None
    assert counter_delta(before, after, "rechka_sessions_active") == {"all": 2.0}
    assert counter_delta(before, after, "rechka_model_busy_seconds_total") == {}


def test_resource_sampler_measures_a_process(tmp_path: Path) -> None:
    me = psutil.Process()
    seen = []  # this process's RSS read directly over the same window (it may move: a long run frees memory)
    with ResourceSampler(os.getpid(), interval=0.1) as sampler:
        t0, cpu0 = time.monotonic(), sum(me.cpu_times()[:2])
        deadline = t0 + 30.0  # a loaded machine may starve the sampler thread for a while
        while (len(sampler.samples) < 6 or time.monotonic() - t0 < 0.6) and time.monotonic() < deadline:
            seen.append(me.memory_info().rss / 2**20)
            sum(range(10_000))  # busy, so the CPU share is visible
        t1, cpu1 = time.monotonic(), sum(me.cpu_times()[:2])
    window = sampler.window(t0, t1)
    assert len(sampler.samples) >= 6
    assert 0.9 * min(seen) <= window["rss_mb_mean"] <= 1.1 * max(seen)
    # the share this process really got over the window (a loaded machine gives it less than a core)
    share = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    assert window["cpu_percent_max"] is not None and window["cpu_percent_max"] >= 0.5 * share > 0
    assert sampler.window(t1 + 100, t1 + 200)["rss_mb_mean"] is None


def test_pid_listening_on_finds_the_listener() -> None:
    import socket

    try:
        psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        pytest.skip("this user may not list sockets")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = pid_listening_on(port)
    assert found == os.getpid()
    assert pid_listening_on(port) is None  # closed now


def test_server_process_reports_a_failed_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code"):
        with ServerProcess(["--no-such-option-for-rechka"], tmp_path / "server.log", startup_timeout=120):
            pass
    assert (tmp_path / "server.log").exists()


@pytest.mark.slow
@pytest.mark.skipif(not TINY_ASR.is_file(), reason=f"{TINY_ASR.name} is absent (scripts/train_tiny_gigaam.py)")
def test_server_process_starts_the_server_as_users_do(tmp_path: Path) -> None:
    """Benchmarks measure the server that ``scripts/serve.sh`` starts: exec'd (the pid is Python's) and on jemalloc
    where it is installed, which is what keeps a long run's RSS flat (docs/benchmarks.md)."""
    with ServerProcess(["--asr-model", str(TINY_ASR)], tmp_path / "server.log") as server:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-m" in cmdline and b"server" in cmdline, cmdline
        assert server.allocator == ("jemalloc" if jemalloc_library() else "glibc")


def _latency_scrape(counts: dict[str, float]) -> str:
    lines = ["# TYPE rechka_final_latency_seconds histogram"]
    total = 0.0
    for le in ("0.5", "1.0", "2.0", "+Inf"):
        total += counts.get(le, 0.0)
        lines.append(f'rechka_final_latency_seconds_bucket{{le="{le}"}} {total}')
    lines += [f"rechka_final_latency_seconds_count {total}", "rechka_final_latency_seconds_sum 0.0"]
    return "\n".join(lines) + "\n"


def test_histogram_quantile_interpolates_inside_the_bucket_of_the_new_observations() -> None:
    before = parse_prometheus(_latency_scrape({"0.5": 100.0}))  # old observations must not count
    after = parse_prometheus(_latency_scrape({"0.5": 100.0, "1.0": 10.0, "2.0": 10.0}))
    name = "rechka_final_latency_seconds"
    assert histogram_quantile(before, after, name, 0.5) == pytest.approx(1.0)  # 10 of 20 at or below 1.0
    assert histogram_quantile(before, after, name, 0.75) == pytest.approx(1.5)  # halfway through (1, 2]
    assert histogram_quantile(before, after, name, 0.25) == pytest.approx(0.75)
    assert histogram_quantile(after, after, name, 0.95) is None
    overflow = parse_prometheus(_latency_scrape({"+Inf": 4.0}))
    assert histogram_quantile({}, overflow, name, 0.95) == pytest.approx(2.0)  # the largest finite bound
