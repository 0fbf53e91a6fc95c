"""The one validated configuration object, a pydantic-settings model.

`load_settings(path, environ)` reads `config.yaml` (or the file `TTS_CONFIG` names) and the
`TTS__<SECTION>__<KEY>` environment variables, the two sources of `Settings` (the environment wins),
and validates every value against the section models below. Code receives the frozen `Settings`;
nothing re-reads files or the environment later: `Settings()` alone is the built-in defaults, so
tests and tools never pick up the process environment by accident. A mistake raises `SettingsError`
naming the key and the reason, which the entry points print as one line per mistake.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX: Final = "TTS__"
ENV_DELIMITER: Final = "__"
DEFAULT_CONFIG_PATH: Final = Path("config.yaml")
MIB: Final = 1024 * 1024
MIN_ADMIN_KEY_CHARS: Final = 16
SECRET_FIELDS: Final = frozenset({"admin_api_keys", "api_keys", "webhook_secret"})
# Synthesis keys that existed once, with what replaced them: a config that still sets one fails
# with a line naming the replacement instead of a bare "unknown key".
REPLACED: Final = {
    "first_chunk_max_phonemes": "synthesis.first_window_frames",
    "chunk_max_phonemes": "synthesis.max_sentence_phonemes",
}
REDIS_SCHEMES: Final = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)


class SettingsError(ValueError):
    """A configuration value is missing, malformed or out of range (and maybe more after it)."""

    def __init__(self, key: str, reason: str, more: tuple[SettingsError, ...] = ()) -> None:
        lines = [f"config error: {key}: {reason}", *(str(error) for error in more)]
        super().__init__("\n".join(lines))
        self.key = key
        self.reason = reason
        self.more = more


def _comma_list(value: Any) -> Any:
    """The documented environment form of a list: `a.example, b.example` (blanks dropped)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


# A list of strings: a YAML list, or one comma-separated string (how the environment writes it;
# NoDecode keeps pydantic-settings from reading it as JSON first).
StrList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]


def _pairs(value: Any) -> Any:
    """The environment form of a name -> name table: `alloy=en_US-joe-medium, nova=en_US-amy-medium`."""
    if not isinstance(value, str):
        return value
    pairs = [item.strip() for item in value.split(",") if item.strip()]
    if not all("=" in pair for pair in pairs):
        raise ValueError(f"expected name=value pairs separated by commas, got {value!r}")
    return {name.strip(): target.strip() for name, target in (pair.split("=", 1) for pair in pairs)}


class FrozenMap(dict[str, str]):
    """A read-only name -> name table that hashes by its items, so `Settings` stays a hashable value."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def _read_only(self, *_: Any, **__: Any) -> None:
        raise TypeError("settings are read-only")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]


# A name -> name table: a YAML mapping, or `a=b,c=d` in one environment variable.
NameMap = Annotated[dict[str, str], NoDecode, BeforeValidator(_pairs), AfterValidator(FrozenMap)]


class Section(BaseModel):
    """One `config.yaml` section: frozen, unknown keys rejected, an empty value means the default.

    A key is a typed field: `port: int = Field(8888, ge=1, le=65535)` for a bounded number (what
    `_opt(8888, low=1, high=65535)` was), `Literal["a", "b"]` for choices, `StrList` for a list;
    a rule beyond those is a `field_validator` raising `ValueError(reason)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _empty_means_default(cls, value: Any, info: Any) -> Any:
        # `url:` with nothing after it is YAML's null: the operator left the key at its default.
        field = cls.model_fields[info.field_name]
        return field.get_default(call_default_factory=True) if value is None else value


class ServerSettings(Section):
    # Loopback by default: a quick start on a laptop must not publish an open server; the image,
    # compose and Kubernetes set 0.0.0.0 explicitly.
    host: str = "127.0.0.1"
    port: int = Field(8888, ge=1, le=65535)
    public_url: str = ""
    workers: int = Field(0, ge=0, le=256)
    graceful_timeout_s: float = Field(30.0, ge=0, le=3600)
    max_body_bytes: int = Field(65536, ge=1024, le=16 * MIB)
    max_header_bytes: int = Field(16384, ge=1024, le=1 * MIB)
    idle_connection_timeout_s: float = Field(60.0, ge=1, le=3600)
    body_timeout_s: float = Field(10.0, ge=1, le=600)
    cors_origins: StrList = ()
    trusted_proxies: StrList = ()
    # Hosts whose name may appear in an audio_url built from the request's Host; empty: the loopback
    # names and this machine's own names. Ignored when public_url is set.
    allowed_hosts: StrList = ()

    @field_validator("public_url")
    @classmethod
    def _public_url_has_a_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network: {proxy!r}") from None
        return value


class SynthesisSettings(Section):
    default_voice: str = "en_US-joe-medium"
    voices: StrList = ()
    models_dir: str = "models"
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    require_cuda: bool = False
    cuda_device_id: int = Field(0, ge=0, le=64)
    cuda_mem_limit_bytes: int = Field(0, ge=0, le=1 << 42)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    cuda_copy_in_default_stream: bool = True
    cpu_mem_arena: bool = False
    mem_pattern: bool = False
    intra_op_threads: int = Field(0, ge=0, le=256)
    concurrency: int = Field(1, ge=1, le=64)
    batch_max_size: int = Field(0, ge=0, le=256)
    batch_window_ms: float = Field(2.0, ge=0, le=1000)
    batch_max_padding: float = Field(1.0, ge=0, le=100)
    max_active_requests: int = Field(16, ge=1, le=10000)
    lookahead_chunks: int = Field(2, ge=1, le=64)
    windowed: bool = True
    first_window_frames: int = Field(16, ge=4, le=4096)
    window_frames: int = Field(96, ge=8, le=4096)
    flow_margin_frames: int = Field(0, ge=0, le=512)
    decoder_margin_frames: int = Field(0, ge=0, le=512)
    max_sentence_phonemes: int = Field(400, ge=16, le=10000)
    # Piper adds no silence between sentences (the voice's own tail gives 0.15-0.25 s); paragraphs
    # (markdown blocks, SSML p) get a longer one. SSML breaks set their own.
    sentence_silence_s: float = Field(0.0, ge=0, le=5)
    paragraph_silence_s: float = Field(0.3, ge=0, le=5)
    max_text_chars: int = Field(5000, ge=1, le=1_000_000)
    # 0: each voice's gain is measured at load to bring it to loudness_lufs; a number: that gain
    # for every voice (an explicit override).
    gain: float = Field(0.0, ge=0, le=10)
    loudness_lufs: float = Field(-20.0, ge=-40, le=-6)
    fade_ms: float = Field(4.0, ge=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys_name_their_replacement(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            for old, new in REPLACED.items():
                if old in values:
                    raise PydanticCustomError(
                        "replaced_key", "no longer supported; use {new} instead", {"key": old, "new": new}
                    )
        return values


TextFormatName = Literal["plain", "markdown", "ssml"]


class TextSettings(Section):
    """The text front-end: how each front door reads `text` when a request names no `text_format`."""

    tts_format: TextFormatName = "plain"  # /tts
    stream_format: TextFormatName = "plain"  # /tts/stream
    openai_format: TextFormatName = "plain"  # /v1/audio/speech (LLM front-ends may want markdown)
    code_block_text: str = Field(
        "Code block omitted.", max_length=200
    )  # said for markdown code; empty: skipped
    table_text: str = Field("Table omitted.", max_length=200)  # said for a markdown table; empty: skipped
    normalize: bool = True  # numbers, currency, units... as words, for the languages that have rules


class AudioSettings(Section):
    """Encoding of the compressed formats (speech needs far lower bitrates than music)."""

    mp3_bitrate_kbps: int = Field(64, ge=8, le=320)
    opus_bitrate_kbps: int = Field(32, ge=6, le=256)
    aac_bitrate_kbps: int = Field(64, ge=16, le=320)
    encode_threads: int = Field(2, ge=1, le=64)


class OpenAISettings(Section):
    """The OpenAI-compatible front door (`/v1/audio/speech`)."""

    max_input_chars: int = Field(4096, ge=1, le=1_000_000)
    # OpenAI voice name -> one of our voice ids; an OpenAI name not listed speaks with the default.
    voices: NameMap = Field(default_factory=FrozenMap)

    @field_validator("voices")
    @classmethod
    def _names_are_not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not all(name and target for name, target in value.items()):
            raise ValueError(f"expected a mapping of names to names, got {value!r}")
        return value


class WyomingSettings(Section):
    """The Wyoming front door (Home Assistant's voice pipeline): a TCP server in every worker."""

    enabled: bool = False
    # Wyoming has no authentication: loopback by default, and only allowed_networks may connect.
    host: str = "127.0.0.1"
    port: int = Field(10200, ge=1, le=65535)
    allowed_networks: StrList = ("127.0.0.0/8", "::1/128")
    max_line_bytes: int = Field(8192, ge=256, le=1 * MIB)
    max_data_bytes: int = Field(65536, ge=256, le=16 * MIB)
    max_payload_bytes: int = Field(65536, ge=0, le=16 * MIB)
    idle_timeout_s: float = Field(60.0, ge=1, le=3600)
    zeroconf: bool = False
    zeroconf_name: str = ""
    attribution_name: str = "Piper"
    attribution_url: str = "https://github.com/OHF-Voice/piper1-gpl"

    @field_validator("allowed_networks")
    @classmethod
    def _networks_are_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network: {network!r}") from None
        return value


class RedisSettings(Section):
    # None (the key left empty): not configured, so the entry point runs a private redis-server on
    # `private_socket`; "" (set explicitly): no Redis at all, L1 and disk only, and no jobs.
    url: str | None = None
    private_socket: str = "var/redis.sock"
    timeout_s: float = Field(0.25, ge=0.01, le=30)
    ttl_s: int = Field(86400, ge=1, le=10 * 365 * 86400)
    max_connections: int = Field(32, ge=1, le=10000)
    key_prefix: str = "tts:"
    breaker_failures: int = Field(3, ge=1, le=1000)
    breaker_reset_s: float = Field(5.0, ge=0.1, le=3600)
    lock_ttl_s: float = Field(30.0, ge=0.5, le=3600)
    probe_interval_s: float = Field(2.0, ge=0.1, le=3600)

    @field_validator("url")
    @classmethod
    def _url_has_a_redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return value


class StorageSettings(Section):
    dir: str = "var/audio"
    ttl_s: int = Field(7 * 86400, ge=1, le=10 * 365 * 86400)
    cleanup_interval_s: float = Field(600.0, ge=0.1, le=86400)
    backend: Literal["disk", "s3"] = "disk"
    journal_max_entries: int = Field(10000, ge=1, le=10_000_000)


class S3Settings(Section):
    """`storage.backend: s3`: the object store. Credentials come only from the AWS chain."""

    bucket: str = ""
    prefix: str = "audio/"
    endpoint_url: str = ""
    region: str = ""
    public_base_url: str = ""
    presign_s: int = Field(0, ge=0, le=7 * 86400)  # S3's own limit for presigned URLs
    timeout_s: float = Field(2.0, ge=0.1, le=60)
    refresh_interval_s: float = Field(86400.0, ge=1, le=365 * 86400)

    @field_validator("endpoint_url", "public_base_url")
    @classmethod
    def _url_has_a_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class CacheSettings(Section):
    l1_max_bytes: int = Field(256 * MIB, ge=0, le=1 << 40)
    # Finished answers of L1 hits, sent again to identical requests (server/handlers/answers.py).
    answers_max_bytes: int = Field(4 * MIB, ge=0, le=1 << 34)


class LimitSettings(Section):
    enabled: bool = True
    # Synthesis tokens: a new text costs one per started synthesis_unit_chars characters.
    synthesis_per_minute: float = Field(60.0, ge=0.1, le=1_000_000)
    synthesis_burst: int = Field(60, ge=1, le=1_000_000)
    synthesis_unit_chars: int = Field(200, ge=1, le=1_000_000)
    requests_per_minute: float = Field(1200.0, ge=1, le=10_000_000)
    requests_burst: int = Field(200, ge=1, le=10_000_000)
    streams_per_client: int = Field(4, ge=1, le=10000)


class JobsSettings(Section):
    """Long documents as asynchronous jobs (`/jobs`), run by SAQ over Redis inside the workers."""

    max_text_chars: int = Field(1_000_000, ge=1, le=100_000_000)
    concurrency: int = Field(1, ge=1, le=64)
    ttl_s: int = Field(7 * 86400, ge=1, le=10 * 365 * 86400)
    timeout_s: int = Field(6 * 3600, ge=1, le=7 * 86400)
    heartbeat_s: int = Field(60, ge=1, le=86400)
    sweep_interval_s: int = Field(30, ge=1, le=86400)
    max_attempts: int = Field(3, ge=1, le=100)
    retry_delay_s: float = Field(5.0, ge=0, le=86400)
    idempotency_ttl_s: int = Field(86400, ge=1, le=30 * 86400)
    allow_http_webhooks: bool = False
    allowed_webhook_hosts: StrList = ()
    webhook_timeout_s: float = Field(10.0, ge=0.1, le=300)
    webhook_attempts: int = Field(8, ge=1, le=100)
    webhook_retry_delay_s: float = Field(5.0, ge=0, le=86400)


class LoggingSettings(Section):
    format: Literal["json", "text"] = "json"
    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
    )

    server: ServerSettings = ServerSettings()
    synthesis: SynthesisSettings = SynthesisSettings()
    text: TextSettings = TextSettings()
    audio: AudioSettings = AudioSettings()
    openai: OpenAISettings = OpenAISettings()
    wyoming: WyomingSettings = WyomingSettings()
    redis: RedisSettings = RedisSettings()
    storage: StorageSettings = StorageSettings()
    s3: S3Settings = S3Settings()
    cache: CacheSettings = CacheSettings()
    limits: LimitSettings = LimitSettings()
    jobs: JobsSettings = JobsSettings()
    logging: LoggingSettings = LoggingSettings()
    # Secrets come only from TTS_ADMIN_API_KEYS(_FILE) and TTS_API_KEYS(_FILE), never from
    # config.yaml (see _api_keys).
    admin_api_keys: tuple[str, ...] = Field((), repr=False)
    api_keys: tuple[str, ...] = Field((), repr=False)  # public keys for /tts*, /audio*, /v1/*
    # Signs job webhooks (Standard Webhooks); from TTS_WEBHOOK_SECRET(_FILE) only.
    webhook_secret: str = Field("", repr=False)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, **_: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed in: `load_settings` names the file and the environment itself."""
        return (init_settings,)

    def worker_count(self, cores: int | None = None) -> int:
        """Configured workers, or one per two cores (each worker runs multi-threaded inference)."""
        cores = cores or available_cores()
        return self.server.workers or max(1, cores // 2)

    def intra_op_threads(self, cores: int | None = None) -> int:
        """Per-session threads: configured, or cores divided by workers so they never oversubscribe."""
        cores = cores or available_cores()
        return self.synthesis.intra_op_threads or max(1, cores // self.worker_count(cores))


SECTIONS: Final = tuple(name for name in Settings.model_fields if name not in SECRET_FIELDS)
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


# -- sources --------------------------------------------------------------------------------------


class EnvironSource(EnvSettingsSource):
    """`TTS__SECTION__KEY` variables from the mapping given (not os.environ), names checked first."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        found: dict[str, str | None] = {}
        for name, value in self._environ.items():
            if not name.upper().startswith(ENV_PREFIX):
                continue
            parts = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
            if len(parts) != 2 or not all(parts):
                raise SettingsError(name, "expected TTS__<SECTION>__<KEY>")
            if parts[0] not in SECTIONS:
                # pydantic-settings would skip a variable no field claims; a typo must not pass.
                raise SettingsError(f"{ENV_PREFIX}{parts[0].upper()}", "unknown section")
            found[name.lower()] = value
        return found


class FileSource(InitSettingsSource):
    """The parsed config file: a mapping of sections, each a mapping (or empty)."""

    def __init__(self, settings_cls: type[BaseSettings], raw: Any) -> None:
        super().__init__(settings_cls, _file_sections(raw))


def _file_sections(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SettingsError("(root)", f"expected a mapping of sections, got {type(raw).__name__}")
    sections: dict[str, Any] = {}
    for name, section in raw.items():
        if name not in SECTIONS:
            raise SettingsError(str(name), "unknown section")  # secrets included: never from a file
        if section is not None and not isinstance(section, Mapping):
            raise SettingsError(str(name), f"expected a mapping, got {section!r}")
        sections[name] = dict(section or {})
    return sections


def _read_yaml(path: Path) -> Any:
    """The file's YAML; a syntax error names the file and the line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SettingsError(str(path), f"not valid YAML: {where}{problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(str(path), f"cannot read: {exc}") from None


def _api_keys(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """API keys from `name` (comma-separated) and/or `{name}_FILE` (one key a line).

    Used for the admin keys (TTS_ADMIN_API_KEYS) and the public ones (TTS_API_KEYS).
    """
    keys = [k.strip() for k in environ.get(name, "").split(",")]
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            keys += [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise SettingsError(f"{name}_FILE", f"cannot read {path}: {exc.strerror}") from None
    keys = [k for k in keys if k]
    for key in keys:
        if len(key) < MIN_ADMIN_KEY_CHARS:
            raise SettingsError(name, f"every key needs at least {MIN_ADMIN_KEY_CHARS} characters")
    return tuple(keys)


def _secret(environ: Mapping[str, str], name: str) -> str:
    """One secret from `name` or the first line of the file `{name}_FILE` names."""
    value = environ.get(name, "").strip()
    path = environ.get(f"{name}_FILE")
    if path and not value:
        try:
            value = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise SettingsError(f"{name}_FILE", f"cannot read a secret from {path}: {exc}") from None
    if value and len(value) < MIN_ADMIN_KEY_CHARS:
        raise SettingsError(name, f"needs at least {MIN_ADMIN_KEY_CHARS} characters")
    return value


# -- errors ---------------------------------------------------------------------------------------

_EXPECTED: Final = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list of strings",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping of names to names",
}


def _choices(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
    return get_args(model.model_fields[str(loc[-1])].annotation)


def _reason(error: ErrorDetails) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    if kind == "extra_forbidden":
        return "unknown section" if len(error["loc"]) == 1 else "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "literal_error":
        return f"must be one of {', '.join(_choices(error['loc']))}, got {value!r}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "replaced_key":
        return str(error["msg"])
    return f"{error['msg']}, got {value!r}"


def _key(error: ErrorDetails) -> str:
    # A replaced key is found by its section's model validator: name the key, not the section.
    loc = (*error["loc"], error["ctx"]["key"]) if error["type"] == "replaced_key" else error["loc"]
    return ".".join(str(part) for part in loc)


def _settings_error(exc: ValidationError) -> SettingsError:
    """Every mistake pydantic found, each as `key: reason`, the first one as `.key`/`.reason`."""
    found = [SettingsError(_key(e), _reason(e)) for e in exc.errors()]
    return SettingsError(found[0].key, found[0].reason, tuple(found[1:]))


def _build(file: PydanticBaseSettingsSource, environ: Mapping[str, str]) -> Settings:
    # Earlier sources win: the secrets, then the environment, then the file.
    keys = {
        "admin_api_keys": _api_keys(environ, "TTS_ADMIN_API_KEYS"),
        "api_keys": _api_keys(environ, "TTS_API_KEYS"),
        "webhook_secret": _secret(environ, "TTS_WEBHOOK_SECRET"),
    }
    secrets = InitSettingsSource(Settings, keys)
    sources = (secrets, EnvironSource(Settings, environ), file)
    try:
        return Settings(_build_sources=(sources, {}))
    except ValidationError as exc:
        raise _settings_error(exc) from None


# -- the public API -------------------------------------------------------------------------------


def jobs_max_body_bytes(settings: Settings) -> int:
    """The largest POST /jobs body: the longest document in UTF-8 (4 bytes a character at most,
    plus JSON escapes are rare in prose), with room for the other fields."""
    return max(settings.server.max_body_bytes, 4 * settings.jobs.max_text_chars + 65536)


def settings_from_mapping(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed config mapping plus environment overrides into `Settings`."""
    settings = _build(FileSource(Settings, raw), environ or {})
    # Rules across keys, which no one field can check.
    if settings.storage.backend == "s3" and not settings.s3.bucket:
        raise SettingsError("s3.bucket", "required when storage.backend is s3")
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
    if config_path.exists():
        raw = _read_yaml(config_path)
    elif explicit:
        raise SettingsError("TTS_CONFIG", f"file not found: {config_path}")
    else:
        raw = {}
    return settings_from_mapping(raw, environ)


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy with some keys changed, validated like the file (used by tests and tools)."""
    values = settings.model_dump()
    for name, changes in sections.items():
        values[name] = {**values[name], **changes}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise _settings_error(exc) from None
