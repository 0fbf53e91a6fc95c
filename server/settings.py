"""The one validated configuration object.

`load_settings(path, environ)` reads `config.yaml` (or the file `TTS_CONFIG` names), applies
`TTS__<SECTION>__<KEY>` environment overrides and checks every value. Code receives the frozen
`Settings`; nothing re-reads files or the environment later. A bad value raises `SettingsError`
naming the key and the reason, which the entry points print as one line.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, get_type_hints

import yaml

ENV_PREFIX: Final = "TTS__"
DEFAULT_CONFIG_PATH: Final = Path("config.yaml")
MIB: Final = 1024 * 1024
MIN_ADMIN_KEY_CHARS: Final = 16
SECRET_FIELDS: Final = frozenset({"admin_api_keys"})


class SettingsError(ValueError):
    """A configuration value is missing, malformed or out of range."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config error: {key}: {reason}")
        self.key = key
        self.reason = reason


def _opt(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its validation rule kept beside the default."""
    meta = {"low": low, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerSettings:
    # Loopback by default: a quick start on a laptop must not publish an open server; the image,
    # compose and Kubernetes set 0.0.0.0 explicitly.
    host: str = _opt("127.0.0.1")
    port: int = _opt(8888, low=1, high=65535)
    public_url: str = _opt("")
    workers: int = _opt(0, low=0, high=256)
    graceful_timeout_s: float = _opt(30.0, low=0, high=3600)
    max_body_bytes: int = _opt(65536, low=1024, high=16 * MIB)
    max_header_bytes: int = _opt(16384, low=1024, high=1 * MIB)
    idle_connection_timeout_s: float = _opt(60.0, low=1, high=3600)
    body_timeout_s: float = _opt(10.0, low=1, high=600)
    cors_origins: tuple[str, ...] = _opt(())
    trusted_proxies: tuple[str, ...] = _opt(())
    # Hosts whose name may appear in an audio_url built from the request's Host; empty: the loopback
    # names and this machine's own names. Ignored when public_url is set.
    allowed_hosts: tuple[str, ...] = _opt(())


@dataclass(frozen=True)
class SynthesisSettings:
    default_voice: str = _opt("en_US-joe-medium")
    voices: tuple[str, ...] = _opt(())
    models_dir: str = _opt("models")
    provider: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    require_cuda: bool = _opt(False)
    cuda_device_id: int = _opt(0, low=0, high=64)
    cuda_mem_limit_bytes: int = _opt(0, low=0, high=1 << 42)
    cudnn_conv_algo_search: str = _opt("HEURISTIC", choices=("EXHAUSTIVE", "HEURISTIC", "DEFAULT"))
    cuda_copy_in_default_stream: bool = _opt(True)
    intra_op_threads: int = _opt(0, low=0, high=256)
    concurrency: int = _opt(1, low=1, high=64)
    batch_max_size: int = _opt(0, low=0, high=256)
    batch_window_ms: float = _opt(2.0, low=0, high=1000)
    batch_max_padding: float = _opt(1.0, low=0, high=100)
    max_active_requests: int = _opt(16, low=1, high=10000)
    lookahead_chunks: int = _opt(2, low=1, high=64)
    first_chunk_max_phonemes: int = _opt(60, low=8, high=10000)
    chunk_max_phonemes: int = _opt(300, low=16, high=10000)
    sentence_silence_s: float = _opt(0.2, low=0, high=5)
    max_text_chars: int = _opt(5000, low=1, high=1_000_000)
    gain: float = _opt(1.0, low=0.01, high=10)
    fade_ms: float = _opt(4.0, low=0, high=100)


@dataclass(frozen=True)
class RedisSettings:
    url: str = _opt("")
    timeout_s: float = _opt(0.25, low=0.01, high=30)
    ttl_s: int = _opt(86400, low=1, high=10 * 365 * 86400)
    max_connections: int = _opt(32, low=1, high=10000)
    key_prefix: str = _opt("tts:")
    breaker_failures: int = _opt(3, low=1, high=1000)
    breaker_reset_s: float = _opt(5.0, low=0.1, high=3600)
    lock_ttl_s: float = _opt(30.0, low=0.5, high=3600)
    probe_interval_s: float = _opt(2.0, low=0.1, high=3600)


@dataclass(frozen=True)
class StorageSettings:
    dir: str = _opt("var/audio")
    ttl_s: int = _opt(7 * 86400, low=1, high=10 * 365 * 86400)
    cleanup_interval_s: float = _opt(600.0, low=0.1, high=86400)
    backend: str = _opt("disk", choices=("disk", "s3"))
    journal_max_entries: int = _opt(10000, low=1, high=10_000_000)


@dataclass(frozen=True)
class S3Settings:
    """`storage.backend: s3`: the object store. Credentials come only from the AWS chain."""

    bucket: str = _opt("")
    prefix: str = _opt("audio/")
    endpoint_url: str = _opt("")
    region: str = _opt("")
    public_base_url: str = _opt("")
    presign_s: int = _opt(0, low=0, high=7 * 86400)  # S3's own limit for presigned URLs
    timeout_s: float = _opt(2.0, low=0.1, high=60)
    refresh_interval_s: float = _opt(86400.0, low=1, high=365 * 86400)


@dataclass(frozen=True)
class CacheSettings:
    l1_max_bytes: int = _opt(256 * MIB, low=0, high=1 << 40)


@dataclass(frozen=True)
class LimitSettings:
    enabled: bool = _opt(True)
    # Synthesis tokens: a new text costs one per started synthesis_unit_chars characters.
    synthesis_per_minute: float = _opt(60.0, low=0.1, high=1_000_000)
    synthesis_burst: int = _opt(60, low=1, high=1_000_000)
    synthesis_unit_chars: int = _opt(200, low=1, high=1_000_000)
    requests_per_minute: float = _opt(1200.0, low=1, high=10_000_000)
    requests_burst: int = _opt(200, low=1, high=10_000_000)
    streams_per_client: int = _opt(4, low=1, high=10000)


@dataclass(frozen=True)
class LoggingSettings:
    format: str = _opt("json", choices=("json", "text"))
    level: str = _opt("INFO", choices=("TRACE", "DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # Secrets come only from the environment (or a mounted file), never from config.yaml.
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)

    def worker_count(self, cores: int | None = None) -> int:
        """Configured workers, or one per two cores (each worker runs multi-threaded inference)."""
        cores = cores or available_cores()
        return self.server.workers or max(1, cores // 2)

    def intra_op_threads(self, cores: int | None = None) -> int:
        """Per-session threads: configured, or cores divided by workers so they never oversubscribe."""
        cores = cores or available_cores()
        return self.synthesis.intra_op_threads or max(1, cores // self.worker_count(cores))


CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU limit in cores (cgroup v2 cpu.max, or v1 cfs quota), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: CPU affinity, capped by a container's CPU quota.

    os.cpu_count() in a container sees the host's cores; sizing workers and threads by it would
    start far more than the quota lets run, and they would only be throttled.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Turn a YAML or environment value into the field's type, or say why not."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise SettingsError(key, f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SettingsError(key, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise SettingsError(key, f"expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise SettingsError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise SettingsError(key, f"expected a number, got {value!r}") from None
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SettingsError(key, f"expected a string, got {value!r}")
        return str(value)
    if hint == tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise SettingsError(key, f"expected a list of strings, got {value!r}")
    raise SettingsError(key, f"unsupported type {hint!r}")  # pragma: no cover - programming error


def _check(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    if choices is not None and value not in choices:
        raise SettingsError(key, f"must be one of {', '.join(choices)}, got {value!r}")
    if low is not None and value < low:
        raise SettingsError(key, f"must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise SettingsError(key, f"must be at most {high}, got {value!r}")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError(name, f"expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for unknown in sorted(set(raw) - set(known)):
        raise SettingsError(f"{name}.{unknown}", "unknown key")
    values: dict[str, Any] = {}
    for fname, f in known.items():
        key = f"{name}.{fname}"
        if fname in raw:
            value = _coerce(key, hints[fname], raw[fname])
        elif f.default is not MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        _check(key, value, f.metadata)
        values[fname] = value
    return cls(**values)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise SettingsError(name, "expected TTS__<SECTION>__<KEY>")
        overrides.setdefault(parts[0], {})[parts[1]] = value
    return overrides


def _admin_keys(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Admin API keys from TTS_ADMIN_API_KEYS (comma-separated) and/or TTS_ADMIN_API_KEYS_FILE."""
    keys = [k.strip() for k in environ.get("TTS_ADMIN_API_KEYS", "").split(",")]
    path = environ.get("TTS_ADMIN_API_KEYS_FILE")
    if path:
        try:
            keys += [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise SettingsError("TTS_ADMIN_API_KEYS_FILE", f"cannot read {path}: {exc.strerror}") from None
    keys = [k for k in keys if k]
    for key in keys:
        if len(key) < MIN_ADMIN_KEY_CHARS:
            raise SettingsError(
                "TTS_ADMIN_API_KEYS", f"every key needs at least {MIN_ADMIN_KEY_CHARS} characters"
            )
    return tuple(keys)


def settings_from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed config mapping plus environment overrides into `Settings`."""
    if not isinstance(raw, Mapping):
        raise SettingsError("(root)", f"expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in fields(Settings) if f.name not in SECRET_FIELDS}
    for unknown in sorted(set(raw) - set(sections)):
        raise SettingsError(str(unknown), "unknown section")
    merged: dict[str, dict[str, Any]] = {}
    for name in sections:
        section = raw.get(name)
        if section is not None and not isinstance(section, Mapping):
            raise SettingsError(name, f"expected a mapping, got {section!r}")
        merged[name] = dict(section or {})
    for section, values in _env_overrides(environ or {}).items():
        if section not in sections:
            raise SettingsError(f"{ENV_PREFIX}{section.upper()}", "unknown section")
        merged[section].update(values)
    hints = get_type_hints(Settings)
    built = {name: _build_section(name, hints[name], merged[name]) for name in sections}
    settings = Settings(**built, admin_api_keys=_admin_keys(environ or {}))
    schemes = (
        "redis://",
        "rediss://",
        "unix://",
        "redis+sentinel://",
        "rediss+sentinel://",
        "redis+cluster://",
        "rediss+cluster://",
    )
    if settings.redis.url and not settings.redis.url.startswith(schemes):
        raise SettingsError("redis.url", f"must start with one of {', '.join(schemes)}")
    for proxy in settings.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError("server.trusted_proxies", f"not an address or network: {proxy!r}") from None
    if settings.server.public_url and not settings.server.public_url.startswith(("http://", "https://")):
        raise SettingsError("server.public_url", "must start with http:// or https://")
    if settings.storage.backend == "s3" and not settings.s3.bucket:
        raise SettingsError("s3.bucket", "required when storage.backend is s3")
    for key in ("endpoint_url", "public_base_url"):
        value = getattr(settings.s3, key)
        if value and not value.startswith(("http://", "https://")):
            raise SettingsError(f"s3.{key}", "must start with http:// or https://")
    if settings.s3.public_base_url and settings.s3.presign_s:
        raise SettingsError("s3.presign_s", "set either s3.public_base_url or s3.presign_s, not both")
    return settings


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (TTS_CONFIG, else ./config.yaml if present) and the environment."""
    environ = os.environ if environ is None else environ
    explicit = path is not None or "TTS_CONFIG" in environ
    config_path = Path(path if path is not None else environ.get("TTS_CONFIG", DEFAULT_CONFIG_PATH))
    raw: Any = {}
    if config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(str(config_path), f"not valid YAML: {exc}".splitlines()[0]) from None
    elif explicit:
        raise SettingsError("TTS_CONFIG", f"file not found: {config_path}")
    return settings_from_mapping(raw, environ)


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy with some keys changed, validated like the file (used by tests and tools)."""
    changed = {}
    for name, values in sections.items():
        current = getattr(settings, name)
        raw = {f.name: getattr(current, f.name) for f in fields(current)} | dict(values)
        changed[name] = _build_section(name, type(current), raw)
    return replace(settings, **changed)
