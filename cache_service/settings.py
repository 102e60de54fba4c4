"""Settings: defaults < one YAML config file < environment (CACHE_*) < command line.

Validated once at start, so a wrong value stops the process with a message that names the
key, instead of surfacing as a strange answer at 2 a.m.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """A setting is wrong; the message says which one and why."""


class PriceSetting(BaseModel):
    input: float = Field(ge=0, description="USD per million prompt tokens")
    output: float = Field(ge=0, description="USD per million completion tokens")
    cached_input: float | None = Field(
        None, ge=0, description="USD per million prompt tokens read from the prompt cache"
    )
    cache_write: float | None = Field(
        None, ge=0, description="USD per million prompt tokens written to the prompt cache"
    )


class UpstreamSetting(BaseModel):
    """One upstream API in the fallback chain, tried in the listed order."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    base_url: str
    api_key_env: str | None = None
    """Environment variable holding this upstream's key (never the key itself in YAML)."""
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    rpd: int | None = Field(None, ge=0)
    """Requests per UTC day (resets at 00:00 UTC), as providers' tiers state them."""
    tpd: int | None = Field(None, ge=0)
    """Tokens per UTC day, held at the estimate and settled to the actual like tpm."""
    models: list[str] = Field(default_factory=lambda: ["*"])
    """Model names (or fnmatch patterns) this upstream serves."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class DowngradeSetting(BaseModel):
    model_config = {"extra": "forbid"}

    at: float = Field(0.9, gt=0, le=1)
    """Share of the project's daily or monthly budget past which misses use `model`."""
    model: str


class ProjectSetting(BaseModel):
    """A project's allocation; requests name it with X-Project-Id."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    rpd: int | None = Field(None, ge=0)
    """Requests per UTC day (resets at 00:00 UTC)."""
    tpd: int | None = Field(None, ge=0)
    """Tokens per UTC day, held at the estimate and settled to the actual like tpm."""
    daily_budget_usd: float | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)
    priority: int = 1
    """Higher goes first when requests queue for quota."""
    downgrade: DowngradeSetting | None = None


class AlertSetting(BaseModel):
    model_config = {"extra": "forbid"}

    thresholds: list[float] = Field(default_factory=lambda: [0.8, 0.95])
    webhook_url: str | None = None


class Settings(BaseSettings):
    """Every knob of the sidecar. Attribute docs double as the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="CACHE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    # --- serving
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    data_dir: Path = Path("data")
    """Where the entry store and spend ledger live. Survives restarts."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Requests larger than this get 413 before any parsing."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Reading a request's whole body must finish within this, else 408: a client that
    stalls or sends a byte a second does not hold its request open indefinitely."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A connection must send a request's headers within this (from connecting, or from the
    previous answer), else it is closed: idle or dribbling connections do not pile up."""
    keep_alive_timeout_s: int = Field(5, ge=1)
    """An idle keep-alive connection is closed this many seconds after its last answer."""
    max_concurrency: int = Field(512, ge=2)
    """Open connections (idle keep-alive ones included) or requests in progress at which
    further requests get 503 at once instead of queueing."""
    max_header_bytes: int = Field(16 * 1024, ge=4096)
    """Request line and headers larger than this are refused with 400."""

    # --- upstream
    upstream_url: str | None = None
    """OpenAI-compatible base URL including /v1. None: `serve` starts the simulated upstream."""
    upstream_api_key: str | None = None
    """If set, replaces the caller's Authorization header; otherwise it is passed through."""
    upstream_timeout_s: float = Field(60.0, gt=0)
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_client: Literal["aiohttp", "httpx"] = "aiohttp"
    """What plain (not streamed) upstream calls go through: aiohttp, whose C parser cost a
    quarter of httpx's event-loop CPU per call here (`backends/aiohttp_upstream.py`), or
    httpx. Streams and relayed calls go through httpx either way."""
    simulated_upstream_port: int = Field(8081, ge=0, le=65535)
    """Port of the bundled simulated upstream when no upstream_url is configured (0: any free)."""

    # --- embedding
    embedder_backend: Literal["auto", "onnx", "torch"] = "auto"
    """auto: the ONNX export under models/ when present (≈3x faster here), else torch."""
    model_dir: Path = Path("models")
    embed_threads: int = Field(1, ge=1, le=64)
    """Intra-op threads per forward pass. 1 on a 2-core box: 2 threads measured 3x slower."""
    embed_batch_max: int = Field(32, ge=1, le=1024)
    embed_timeout_ms: float = Field(500.0, gt=0)
    """An embedding slower than this fails open: the request goes upstream as a miss."""
    semantic_max_chars: int = Field(1000, ge=1)
    """Longer prompts are matched exactly only: MiniLM reads 256 word pieces, so two long
    prompts that differ only past that window would look identical to it."""

    # --- matching
    similarity_threshold: float = Field(0.92, gt=0, le=1)
    """Cosine similarity a candidate must reach before the acceptance guards look at it
    (chosen by measurement: benchmarks/quality)."""
    min_threshold: float = Field(0.92, gt=0, le=1)
    """Floor for per-request thresholds: a caller may ask for stricter, never looser. Lower
    it to let callers opt into looser matching."""
    search_k: int = Field(4, ge=1, le=64)
    """Candidates read per semantic lookup; the best accepted one wins."""
    verifier: Literal["auto", "on", "off"] = "off"
    """A cross-encoder reading both prompts judges every candidate before it is served. auto:
    on when verifier_dir holds a manifest.json; on: refuse to start without a usable one.
    Off by default: the shipped model costs 7-15 ms of CPU per judged pair, and on 2 cores
    at 100 requests/s that overloaded the sidecar (the soak: p50 16 s); its quality gain is
    real but modest (README, "The verifier"). Turn it on where the cores allow."""
    verifier_dir: Path = Path("models/verifier")
    """The verifier model: manifest.json, tokenizer.json and the ONNX file it names."""
    verifier_error_bound: float | None = Field(None, ge=0, le=1)
    """Accepted share of wrong hits: the verifier uses the loosest calibrated threshold whose
    measured wrong share is within it (the strictest one if none is). None: the manifest's
    calibrated default threshold."""
    verifier_threshold: float | None = Field(None, ge=0, le=1)
    """Explicit probability a pair must reach; wins over verifier_error_bound."""
    verifier_floor: float | None = Field(None, gt=0, le=1)
    """Cosine a candidate must reach to be shown to the verifier (with a verifier on, this
    replaces similarity_threshold). None: the manifest's floor, the one it was calibrated at."""
    verifier_timeout_ms: float = Field(250.0, gt=0)
    """A verdict slower than this refuses its candidate (a miss, never a hit)."""
    verifier_guards: bool = True
    """With a verifier on, still run the lexical guards before it (they refuse cheaply what
    they catch). Off: only the floor and the verifier decide."""
    audit_sample_rate: float = Field(0.0, ge=0, le=1)
    """Share of semantic hits also asked upstream (within quota) to estimate live precision."""
    audit_agree_similarity: float = Field(0.8, gt=0, le=1)
    """Cosine between cached and fresh answer above which an audited hit counts as right."""
    cache_tool_calls: bool = False
    """Store answers that call tools. Off: a tool call usually depends on live state."""

    # --- storage
    default_ttl_s: float = Field(7 * 24 * 3600, gt=0)
    max_ttl_s: float = Field(30 * 24 * 3600, gt=0)
    """Upper bound for X-Cache-TTL and store requests."""
    store_size_limit_bytes: int = Field(6 * 1024**3, ge=1024**2)
    """Past this the oldest entries are evicted (counted, with a warning at 80 %). Sized by
    measurement: an entry with a ~1 KB answer takes ≈4.3 KB on disk, so the default holds
    about 1.5 million entries (the old 2 GiB silently lost everything past ≈500k)."""
    sweep_interval_s: float = Field(60.0, gt=0)

    # --- money
    prices: dict[str, PriceSetting] = Field(default_factory=dict)
    """USD per million tokens by model; merged over the shipped defaults."""
    default_price: PriceSetting | None = None
    """Price of models missing from the table. None: they cost $0, so budgets cannot
    count them (a warning is logged once per such model)."""

    # --- quota (only misses reach upstream, and only within these)
    upstreams: list[UpstreamSetting] = Field(default_factory=list)
    """Fallback chain. Empty: one upstream named "primary" at upstream_url, no limits."""
    projects: list[ProjectSetting] = Field(default_factory=list)
    """Per-project allocations. A request's project is X-Project-Id, else "default";
    a project not listed gets the limits of the one named "default", if any."""
    unlisted_projects: Literal["default", "reject"] = "default"
    """A miss whose X-Project-Id is not in `projects`: "default" gives it the "default"
    project's limits in a scope of its own; "reject" refuses it with 403 (hits are still
    served: they reach no upstream and spend nothing)."""
    max_projects: int = Field(1000, ge=1)
    """Distinct unlisted X-Project-Id values given scopes of their own; further unknown
    names share the "default" project's scope."""
    total_daily_budget_usd: float | None = Field(None, ge=0)
    total_monthly_budget_usd: float | None = Field(None, ge=0)
    alerts: AlertSetting = Field(default_factory=AlertSetting)
    on_limit: Literal["queue", "reject"] = "queue"
    """At a limit: wait for room (bounded by max_queue_wait_s), or answer 429 at once."""
    max_queue_wait_s: float = Field(10.0, ge=0)
    spend_snapshot_interval_s: float = Field(1.0, gt=0)
    """How often spend is snapshotted (fsync). Between snapshots a journal keeps every
    charge, so a killed process loses none; this only bounds the journal's length."""
    default_completion_tokens: int = Field(256, ge=1)
    """Completion estimate for requests without max_tokens, reserved until usage settles."""
    max_retries: int = Field(3, ge=0, le=10)
    """Retries per upstream on 429, 5xx and connection errors, before falling back (a
    connection refused or a host not found falls back at once: asking again cannot help)."""
    backoff_base_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(8.0, gt=0)
    retry_after_cap_s: float = Field(30.0, gt=0)
    """An upstream's Retry-After is honoured up to this many seconds."""
    request_deadline_s: float = Field(120.0, gt=0)
    """The whole upstream part of one request (every retry and fallback, and a stream to
    its last byte) ends by then: no retry or fallback starts that could not finish in time."""
    stream_idle_timeout_s: float = Field(60.0, gt=0)
    """A stream that sends no bytes for this long is ended with an error event."""
    breaker_failures: int = Field(5, ge=1)
    """Consecutive failures that open an upstream's circuit breaker."""
    breaker_cooldown_s: float = Field(30.0, gt=0)
    # --- fleet (several replicas sharing quota and cache through Redis)
    redis_url: str | None = None
    """redis://host:port/db shared by every replica: quota, budgets, cached entries and
    single flight become fleet-wide. None: this process alone, nothing but its data dir."""
    redis_prefix: str = Field("llmcache", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Key prefix (and hash tag) of this fleet's keys, so fleets can share one Redis."""
    replica_id: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """This replica's name in the fleet (reservation ids, stats). None: host and pid."""
    redis_timeout_s: float = Field(0.5, gt=0)
    """A Redis call slower than this counts as Redis being down for that request."""
    redis_lease_s: float = Field(30.0, gt=0)
    """How long a replica's quota holds and single-flight locks outlive it: a replica
    killed mid-call has its holds counted as spent, and its lock handed over, after this."""
    redis_down_quota: Literal["share", "reject", "allow"] = "share"
    """Quota while Redis is unreachable. share: each replica enforces its share of every
    limit (limit ÷ replicas last seen alive) locally and books that spend into Redis when
    it returns; reject: misses get 503; allow: misses go upstream unmetered."""

    # --- telemetry
    outcome_log: bool = True
    """Keep one row per request (never the prompt) in data_dir/outcomes.sqlite3 for reports."""
    outcome_log_retention_days: float = Field(30.0, gt=0)
    outcome_log_max_rows: int = Field(1_000_000, ge=1000)
    max_label_values: int = Field(500, ge=1)
    """Distinct namespaces, projects and models given their own stats rows and metric
    labels; further values (they come from requests) are counted together as "_other"."""
    log_prompts: bool = False
    """Also store prompt text in the outcome log. Off by default."""

    admin_key: str | None = None
    """Bearer key (or X-Admin-Key) for operations spanning tenants: limits, invalidation
    across tenants, every tenant's stats and reports. None: those are refused."""
    admin_only_ops: bool = False
    """Also require the admin key for /metrics and /v1/quota, which show every tenant's
    namespaces and every project's spend. Off by default: keep the port private instead,
    or turn this on and give the scraper the key."""
    identity_header: str | None = None
    """A header the operator's own gateway sets to name the caller (trusted as its
    identity, in place of its API key's hash). Only set it if callers cannot send it."""
    shared_namespaces: list[str] = Field(default_factory=list)
    """Namespaces whose entries every caller naming them shares, whatever its credential.
    At the operator's risk: one caller's stored answer is served to all the others."""

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.min_threshold > self.similarity_threshold:
            raise ValueError("min_threshold must not exceed similarity_threshold")
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError("default_ttl_s must not exceed max_ttl_s")
        if self.unlisted_projects == "reject" and not self.projects:
            raise ValueError("unlisted_projects: reject needs at least one entry in projects")
        return self

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "entries"

    @property
    def outcome_log_path(self) -> Path:
        return self.data_dir / "outcomes.sqlite3"


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build validated settings; raise ConfigError naming every wrong key."""
    path = config_file or os.environ.get("CACHE_CONFIG")
    file_data = _read_yaml(Path(path)) if path else {}
    explicit = {k: v for k, v in overrides.items() if v is not None}

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, file_data))

    try:
        layered = _Layered(**explicit)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from e
    return Settings.model_construct(**dict(layered))
