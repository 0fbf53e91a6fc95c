"""Spec of the configuration: config.yaml documents the defaults, the environment overrides them,
and a bad value fails with one message naming the key and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from server.settings import ServerSettings, Settings, SettingsError, load_settings, with_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"


def test_config_yaml_documents_exactly_the_built_in_defaults():
    assert load_settings(CONFIG, environ={}) == Settings()


def test_missing_default_config_file_means_built_in_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}) == Settings()


def test_env_overrides_an_integer_key():
    settings = load_settings(CONFIG, environ={"TTS__SERVER__PORT": "9000"})
    assert settings.server.port == 9000
    assert settings.server.host == "127.0.0.1"


def test_env_overrides_a_string_key():
    settings = load_settings(CONFIG, environ={"TTS__REDIS__URL": "redis://127.0.0.1:6390/2"})
    assert settings.redis.url == "redis://127.0.0.1:6390/2"


def test_env_section_and_key_names_are_case_insensitive():
    settings = load_settings(CONFIG, environ={"TTS__Logging__LEVEL": "DEBUG"})
    assert settings.logging.level == "DEBUG"


def test_env_list_value_is_comma_separated_and_trimmed():
    environ = {"TTS__SERVER__CORS_ORIGINS": "https://a.example.com, https://b.example.com ,"}
    settings = load_settings(CONFIG, environ=environ)
    assert settings.server.cors_origins == ("https://a.example.com", "https://b.example.com")


def test_env_list_of_one_item_needs_no_comma():
    settings = load_settings(CONFIG, environ={"TTS__SERVER__TRUSTED_PROXIES": "10.0.0.0/8"})
    assert settings.server.trusted_proxies == ("10.0.0.0/8",)


def test_env_list_is_not_read_as_json():
    settings = load_settings(CONFIG, environ={"TTS__SYNTHESIS__VOICES": '["a.onnx"]'})
    assert settings.synthesis.voices == ('["a.onnx"]',)


def test_empty_env_list_means_none():
    settings = load_settings(CONFIG, environ={"TTS__SERVER__CORS_ORIGINS": ""})
    assert settings.server.cors_origins == ()


def test_env_list_replaces_the_files_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  cors_origins: [https://file.example]\n", encoding="utf-8")
    assert load_settings(path, environ={}).server.cors_origins == ("https://file.example",)
    environ = {"TTS__SERVER__CORS_ORIGINS": "https://env.example"}
    assert load_settings(path, environ=environ).server.cors_origins == ("https://env.example",)


def test_env_boolean_accepts_words():
    settings = load_settings(CONFIG, environ={"TTS__SYNTHESIS__REQUIRE_CUDA": "yes"})
    assert settings.synthesis.require_cuda is True


def test_env_ignores_variables_without_the_prefix():
    assert load_settings(CONFIG, environ={"TTS_PORT": "1", "PORT": "2"}) == Settings()


def test_tts_config_names_another_file(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  port: 7001\nredis:\n  ttl_s: 60\n", encoding="utf-8")
    settings = load_settings(environ={"TTS_CONFIG": str(other)})
    assert settings.server.port == 7001
    assert settings.redis.ttl_s == 60
    assert settings.synthesis == Settings().synthesis


def test_env_wins_over_the_file(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  port: 7001\n", encoding="utf-8")
    settings = load_settings(environ={"TTS_CONFIG": str(other), "TTS__SERVER__PORT": "7002"})
    assert settings.server.port == 7002


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.server = ServerSettings()  # type: ignore[misc]


def test_settings_are_hashable_values():
    assert hash(load_settings(CONFIG, environ={})) == hash(Settings())


def test_settings_alone_never_read_the_process_environment(monkeypatch):
    monkeypatch.setenv("TTS__SERVER__PORT", "9999")
    monkeypatch.setenv("TTS_ADMIN_API_KEYS", "k" * 20)
    assert Settings() == load_settings(CONFIG, environ={})
    assert load_settings(CONFIG).server.port == 9999


def test_with_overrides_validates_like_the_file():
    assert with_overrides(Settings(), server={"port": 9001}).server.port == 9001
    with pytest.raises(SettingsError) as caught:
        with_overrides(Settings(), server={"port": 0})
    assert str(caught.value) == "config error: server.port: must be at least 1, got 0"


def _error(environ: dict[str, str], path: Path | None = CONFIG) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ=environ)
    return caught.value


def test_port_zero_is_rejected_naming_the_key_and_the_bound():
    error = _error({"TTS__SERVER__PORT": "0"})
    assert (error.key, error.reason) == ("server.port", "must be at least 1, got 0")
    assert str(error) == "config error: server.port: must be at least 1, got 0"


def test_port_above_65535_is_rejected():
    error = _error({"TTS__SERVER__PORT": "65536"})
    assert (error.key, error.reason) == ("server.port", "must be at most 65535, got 65536")


def test_non_numeric_port_is_rejected_naming_the_value():
    error = _error({"TTS__SERVER__PORT": "abc"})
    assert (error.key, error.reason) == ("server.port", "expected an integer, got 'abc'")


def test_non_numeric_float_is_rejected():
    error = _error({"TTS__REDIS__TIMEOUT_S": "soon"})
    assert (error.key, error.reason) == ("redis.timeout_s", "expected a number, got 'soon'")


def test_bad_boolean_is_rejected():
    error = _error({"TTS__SYNTHESIS__REQUIRE_CUDA": "maybe"})
    assert (error.key, error.reason) == ("synthesis.require_cuda", "expected true or false, got 'maybe'")


def test_unknown_key_in_env_is_rejected():
    error = _error({"TTS__SERVER__PROT": "9000"})
    assert (error.key, error.reason) == ("server.prot", "unknown key")


def test_unknown_key_in_env_is_rejected_whatever_its_case():
    error = _error({"tts__logging__colour": "yes"})
    assert (error.key, error.reason) == ("logging.colour", "unknown key")


def test_env_name_with_too_many_parts_is_rejected():
    error = _error({"TTS__SERVER__PORT__X": "1"})
    assert (error.key, error.reason) == ("TTS__SERVER__PORT__X", "expected TTS__<SECTION>__<KEY>")


def test_admin_keys_are_not_a_setting_of_the_environment_form():
    error = _error({"TTS__ADMIN_API_KEYS": "k" * 20})
    assert (error.key, error.reason) == ("TTS__ADMIN_API_KEYS", "expected TTS__<SECTION>__<KEY>")


def test_admin_keys_are_never_read_from_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"admin_api_keys: [{'k' * 20}]\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("admin_api_keys", "unknown section")


def test_admin_keys_come_from_the_variable_and_the_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{'b' * 16}\n\n", encoding="utf-8")
    environ = {"TTS_ADMIN_API_KEYS": f"{'a' * 16}, ", "TTS_ADMIN_API_KEYS_FILE": str(keys)}
    settings = load_settings(CONFIG, environ=environ)
    assert settings.admin_api_keys == ("a" * 16, "b" * 16)
    assert "a" * 16 not in repr(settings)


def test_short_admin_key_is_rejected():
    error = _error({"TTS_ADMIN_API_KEYS": "short"})
    assert (error.key, error.reason) == ("TTS_ADMIN_API_KEYS", "every key needs at least 16 characters")


def test_every_mistake_is_reported_one_line_each():
    error = _error({"TTS__SERVER__PORT": "0", "TTS__LOGGING__LEVEL": "LOUD", "TTS__REDIS__TTL_S": "x"})
    assert (error.key, error.reason) == ("server.port", "must be at least 1, got 0")
    assert str(error).splitlines() == [
        "config error: server.port: must be at least 1, got 0",
        "config error: redis.ttl_s: expected an integer, got 'x'",
        "config error: logging.level: must be one of TRACE, DEBUG, INFO, WARNING, ERROR, got 'LOUD'",
    ]


def test_a_list_where_a_number_belongs_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  ttl_s: [1]\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("redis.ttl_s", "expected an integer, got [1]")


def test_a_key_left_empty_in_the_file_means_its_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  url:\n  ttl_s:\n", encoding="utf-8")
    assert load_settings(path, environ={}).redis == Settings().redis


def test_unknown_key_in_file_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  urll: redis://x\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("redis.urll", "unknown key")


@pytest.mark.parametrize(
    ("old", "replacement"),
    [
        ("first_chunk_max_phonemes", "synthesis.first_window_frames"),
        ("chunk_max_phonemes", "synthesis.max_sentence_phonemes"),
    ],
)
def test_a_replaced_clause_cut_setting_is_rejected_naming_its_replacement(tmp_path, old, replacement):
    path = tmp_path / "c.yaml"
    path.write_text(f"synthesis:\n  {old}: 60\n", encoding="utf-8")
    error = _error({}, path)
    assert str(error) == f"config error: synthesis.{old}: no longer supported; use {replacement} instead"
    assert _error({f"TTS__SYNTHESIS__{old.upper()}": "60"}).key == f"synthesis.{old}"


def test_unknown_section_in_file_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sever:\n  port: 1\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("sever", "unknown section")


def test_unknown_section_in_env_is_rejected_naming_the_variable():
    error = _error({"TTS__SEVER__PORT": "9000"})
    assert (error.key, error.reason) == ("TTS__SEVER", "unknown section")


def test_env_name_without_section_and_key_is_rejected():
    error = _error({"TTS__PORT": "9000"})
    assert (error.key, error.reason) == ("TTS__PORT", "expected TTS__<SECTION>__<KEY>")


def test_provider_outside_its_choices_is_rejected_listing_them():
    error = _error({"TTS__SYNTHESIS__PROVIDER": "gpu"})
    assert (error.key, error.reason) == ("synthesis.provider", "must be one of auto, cpu, cuda, got 'gpu'")


def test_section_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server: 8080\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("server", "expected a mapping, got 8080")


def test_file_that_is_not_a_mapping_of_sections_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- server\n- redis\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("(root)", "expected a mapping of sections, got list")


def test_empty_section_means_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("server:\nredis:\n  ttl_s: 5\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.server == Settings().server
    assert settings.redis.ttl_s == 5


def test_public_url_must_have_a_scheme():
    error = _error({"TTS__SERVER__PUBLIC_URL": "tts.example.com"})
    assert (error.key, error.reason) == ("server.public_url", "must start with http:// or https://")


def test_redis_url_must_have_a_redis_scheme():
    error = _error({"TTS__REDIS__URL": "localhost:6379"})
    assert error.key == "redis.url"
    assert error.reason.startswith("must start with one of redis://, rediss://, unix://")


def test_invalid_yaml_is_rejected_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: 1\n  host: [a, b\nredis:\n  url: x\n", encoding="utf-8")
    error = _error({}, path)
    assert error.key == str(path)
    assert error.reason == "not valid YAML: line 4, column 6: expected ',' or ']', but got ':'"
    assert "\n" not in str(error)


def test_yaml_indentation_error_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: 1\n   host: x\n", encoding="utf-8")
    error = _error({}, path)
    assert error.reason == "not valid YAML: line 3, column 8: mapping values are not allowed here"


def test_missing_tts_config_file_is_rejected(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    error = _error({"TTS_CONFIG": str(missing)}, path=None)
    assert (error.key, error.reason) == ("TTS_CONFIG", f"file not found: {missing}")


def test_server_exits_with_one_line_naming_the_bad_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
    env["TTS__SERVER__PORT"] = "abc"
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "config error: server.port: expected an integer, got 'abc'\n"


def test_server_exits_naming_the_line_of_a_broken_config_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  port: 1\n   host: x\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
    env["TTS_CONFIG"] = str(broken)
    result = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"config error: {broken}: not valid YAML: line 3, column 8: mapping values are not allowed here\n"
    )


@pytest.mark.parametrize(
    ("cores", "workers"),
    [(1, 1), (2, 1), (3, 1), (8, 4), (16, 8), (64, 32)],
)
def test_default_is_one_worker_per_two_cores(cores, workers):
    assert Settings().worker_count(cores) == workers


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (3, 3), (8, 2), (16, 2)])
def test_default_threads_split_the_cores_among_workers(cores, threads):
    assert Settings().intra_op_threads(cores) == threads


def test_configured_workers_and_threads_win():
    settings = with_overrides(Settings(), server={"workers": 3}, synthesis={"intra_op_threads": 5})
    assert settings.worker_count(8) == 3
    assert settings.intra_op_threads(8) == 5


@st.composite
def _cores_and_workers(draw: st.DrawFn) -> tuple[int, int]:
    cores = draw(st.integers(1, 512))
    # More workers than cores is an explicit operator choice the arithmetic cannot repair.
    return cores, draw(st.integers(0, min(cores, 256)))


@given(_cores_and_workers())
def test_workers_times_threads_never_exceed_the_cores(cores_and_workers):
    cores, workers = cores_and_workers
    settings = with_overrides(Settings(), server={"workers": workers})
    count, threads = settings.worker_count(cores), settings.intra_op_threads(cores)
    assert count >= 1
    assert threads >= 1
    assert count * threads <= cores


def test_openai_voices_come_from_a_mapping_or_name_value_pairs_in_the_environment():
    environ = {"TTS__OPENAI__VOICES": "alloy=en_US-joe-medium, nova=en_US-amy-medium"}
    settings = load_settings(CONFIG, environ=environ)
    assert settings.openai.voices == {"alloy": "en_US-joe-medium", "nova": "en_US-amy-medium"}
    assert hash(settings) == hash(load_settings(CONFIG, environ=environ))


def test_openai_voices_without_pairs_name_the_key():
    with pytest.raises(SettingsError) as caught:
        load_settings(CONFIG, environ={"TTS__OPENAI__VOICES": "alloy"})
    assert (caught.value.key, caught.value.reason) == (
        "openai.voices",
        "expected name=value pairs separated by commas, got 'alloy'",
    )


def test_public_api_keys_come_from_their_own_variable():
    settings = load_settings(CONFIG, environ={"TTS_API_KEYS": f"{'p' * 16},{'q' * 16}"})
    assert settings.api_keys == ("p" * 16, "q" * 16)
    assert settings.admin_api_keys == ()


def test_public_api_keys_also_come_from_a_file_one_per_line(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{'r' * 16}\n\n{'s' * 16}\n", encoding="utf-8")
    settings = load_settings(CONFIG, environ={"TTS_API_KEYS_FILE": str(keys)})
    assert settings.api_keys == ("r" * 16, "s" * 16)


def test_public_api_keys_are_not_read_from_the_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"api_keys: [{'k' * 20}]\n", encoding="utf-8")
    error = _error({}, path)
    assert (error.key, error.reason) == ("api_keys", "unknown section")


def test_each_front_door_reads_text_in_its_configured_format():
    settings = load_settings(CONFIG, environ={"TTS__TEXT__OPENAI_FORMAT": "markdown"})
    assert (settings.text.tts_format, settings.text.stream_format, settings.text.openai_format) == (
        "plain",
        "plain",
        "markdown",
    )


def test_an_unknown_text_format_in_the_config_names_the_key():
    with pytest.raises(SettingsError) as caught:
        load_settings(CONFIG, environ={"TTS__TEXT__TTS_FORMAT": "html"})
    assert caught.value.key == "text.tts_format"
