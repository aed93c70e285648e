"""server/config.py: flags over environment over defaults, validated into one frozen ServerConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.config import CPU_DIARIZATION_STEP, ServerConfig, config_from_args, read_tokens
from streaming.config import DiarizationOptions, ms


def test_defaults_match_the_documented_ones() -> None:
    config = config_from_args([], {})
    assert (config.host, config.port, config.asr_model, config.device) == ("127.0.0.1", 8000, "v2_ctc", "auto")
    assert config.tokens == frozenset() and not config.tls and not config.allow_random_weights
    assert (config.asr_engine, config.asr_quantize) == ("auto", "auto")
    assert config.embedding_reuse == "none" and config_from_args(["--embedding-reuse", "edge"], {}).embedding_reuse == "edge"


def test_auto_engine_is_onnx_int8_on_the_cpu_and_torch_on_cuda() -> None:
    from server.models.registry import asr_engine_for

    assert asr_engine_for("cpu") == ("onnx", "int8")
    assert asr_engine_for("cuda") == ("torch", None)
    assert asr_engine_for("cpu", "torch") == ("torch", None)
    assert asr_engine_for("cpu", "onnx", None) == ("onnx", None)
    assert asr_engine_for("cpu", "torch", "int8") == ("torch", "int8")


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    env = {"RECHKA_PORT": "9001", "RECHKA_MAX_SESSIONS": "7", "RECHKA_ALLOW_RANDOM_WEIGHTS": "yes"}
    config = config_from_args(["--port", "9002", "--max-wait-ms", "2.5", "--asr-engine", "onnx"], env)
    assert (config.port, config.max_sessions, config.max_wait_ms, config.asr_engine) == (9002, 7, 2.5, "onnx")
    assert config.allow_random_weights is True


def test_tokens_come_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# team tokens\nalpha\n\n  beta  # laptop\n", encoding="utf-8")
    config = config_from_args(["--tokens-file", str(path)], {"RECHKA_TOKENS": "gamma, delta"})
    assert config.tokens == {"alpha", "beta", "gamma", "delta"}
    assert "alpha" not in str(config.summary())
    assert read_tokens("a\n#b\n") == {"a"}


def test_an_empty_or_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no token"):
        config_from_args(["--tokens-file", str(empty)], {})
    with pytest.raises(ValueError, match="cannot be read"):
        config_from_args(["--tokens-file", str(tmp_path / "absent")], {})


@pytest.mark.parametrize("argv, fix", [
    (["--port", "70000"], "port must be 0-65535"),
    (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["--max-sessions", "0"], "max_sessions must be >= 1"),
    (["--max-message-bytes", "10"], "max_message_bytes must be between"),
    (["--idle-timeout", "0"], "idle_timeout must be > 0"),
    (["--max-batch", "0"], "max_batch must be 1-1024"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "tls_cert: file"),
    (["--shutdown-grace", "-1"], "shutdown_grace must be >= 0"),
    (["--asr-engine", "tensorflow"], "asr_engine must be auto, torch or onnx"),
    (["--device", "cuda", "--asr-quantize", "int8"], "asr_quantize=int8 needs --device cpu"),
    (["--embedding-reuse", "always"], "embedding reuse 'always' is unknown; use one of none, edge, grid"),
    (["--embedding-model", "campplus", "--embedding-reuse", "edge"],
     "applies to resemblyzer only; use --embedding-reuse none with --embedding-model campplus"),
])
def test_bad_values_raise_a_value_error_that_names_the_fix(argv: list[str], fix: str) -> None:
    with pytest.raises(ValueError, match=fix):
        config_from_args(argv, {})


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        ServerConfig(tls_cert=str(cert))


def test_a_malformed_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="RECHKA_PORT='eighty'"):
        config_from_args([], {"RECHKA_PORT": "eighty"})
    with pytest.raises(ValueError, match="RECHKA_ALLOW_RANDOM_WEIGHTS"):
        config_from_args([], {"RECHKA_ALLOW_RANDOM_WEIGHTS": "maybe"})


def test_the_config_is_frozen_and_static_serving_can_be_disabled() -> None:
    config = config_from_args(["--static-dir", "none"], {})
    assert config.static_dir is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_the_diarization_step_flag_is_validated_and_fitted_to_the_session() -> None:
    from server.models.registry import fit_session

    class Model:  # what fit_session reads of the loaded models
        window = 5 * 16000

    def fitted(config: ServerConfig, device: str = "cpu") -> DiarizationOptions:
        return fit_session(config, {"segmentation": Model(), "embedding": Model()}, device).session.diarizer

    default = config_from_args([], {})
    assert default.diarization_step is None  # auto
    base = default.session.diarizer
    assert fitted(default) == base.at_step(ms(1000 * CPU_DIARIZATION_STEP)) and base.step == ms(500)
    assert fitted(default).step == ms(1000)  # the CPU default: a 1 s step
    assert fitted(default, "cuda:0") == base  # on CUDA the diarizer's own 0.5 s
    config = config_from_args(["--diarization-step", "0.5"], {"RECHKA_DIARIZATION_STEP": "2"})
    assert config.diarization_step == 0.5
    assert fitted(config) == base and fitted(config, "cuda") == base
    assert fitted(config_from_args([], {"RECHKA_DIARIZATION_STEP": "2"}), "cuda").step == ms(2000)
    with pytest.raises(ValueError, match="diarization_step must be 0.1-30 seconds"):
        ServerConfig(diarization_step=0.05)
    with pytest.raises(ValueError, match="between 0.1 s and the window"):  # longer than PyanNet's 5 s window
        fit_session(ServerConfig(diarization_step=6.0), {"segmentation": Model(), "embedding": Model()}, "cpu")
