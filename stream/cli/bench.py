"""``shopstream bench ...``: benchmarks are commands that print numbers (``--json`` for machines)."""
from __future__ import annotations

from pathlib import Path

import click
import orjson

from stream.cli.evaluate import dataset_options


def emit(result: dict, as_json: bool, render) -> None:
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        render(result)


def register(cli: click.Group) -> None:
    @cli.group("bench")
    def bench() -> None:
        """Measure throughput and latency; print a table, or JSON with --json."""

    @bench.command("e2e")
    @click.option("--events", "n_events", type=click.IntRange(min=1), default=20_000, show_default=True)
    @click.option("--rate", type=click.FloatRange(min=1), default=None,
                  help="Offered load in events/s (default: as fast as the producer can).")
    @click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True,
                  help="Shoppers the real Online Retail shoppers are folded into; equal to --events: "
                       "every event a different shopper (the worst case for session writes).")
    @click.option("--ceiling/--no-ceiling", default=True, show_default=True,
                  help="First measure the driver alone (producing into a topic and counting it back) and a "
                       "plain aiokafka forwarder through the same broker and partitions: the ceiling.")
    @click.option("--bad-share", type=click.FloatRange(0, 0.5), default=0.01, show_default=True)
    @click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Worker processes in the one consumer group (the partitions are shared out).")
    @click.option("--broker", default=None, help="Kafka to use (default: start the embedded broker).")
    @click.option("--json", "as_json", is_flag=True)
    def e2e(n_events, rate, users, ceiling, bad_share, partitions, workers, broker, as_json) -> None:
        """Drive N events through broker, worker and the recommendations topic.

        Prints events/s, latency, what was missed and dead-lettered, the CPU each process spent
        per event and, unless --no-ceiling, the same against the ceiling and the core alone."""
        from stream.tools.bench_e2e import render, run_e2e_bench
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()

        result = run_e2e_bench(n_events=n_events, rate=rate, users=users, bad_share=bad_share,
                               partitions=partitions, broker=broker, progress=not as_json,
                               with_ceiling=ceiling, workers=workers)
        emit(result, as_json, render)

    @bench.command("online")
    @click.option("--events", "n_events", type=click.IntRange(min=100), default=20_000, show_default=True)
    @click.option("--rate", type=click.FloatRange(min=1), default=400.0, show_default=True,
                  help="Offered events/s: a shopper's events spread over several batches, as in a shop.")
    @click.option("--candidate", default="default", show_default=True,
                  help="The candidate's session model: default (the shipped trained encoder) or an artifact folder.")
    @click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--broker", default=None, help="Kafka to use (default: start the embedded broker).")
    @click.option("--png", type=click.Path(path_type=Path), default=None, help="Also plot hit rate over time.")
    @click.option("--learn/--no-learn", default=True, show_default=True,
                  help="Then run learn once on the replayed events (where shopstream learn exists).")
    @click.option("--json", "as_json", is_flag=True)
    def online(n_events, rate, candidate, partitions, broker, png, learn, as_json) -> None:
        """A/B in one run: pooling against the trained encoder, 50/50, online hit rates and the verdict."""
        from stream.tools.bench_online import render, run_online_bench
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()
        result = run_online_bench(n_events=n_events, rate=rate, candidate=candidate, partitions=partitions,
                                  broker=broker, progress=not as_json, png=png, learn=learn)
        emit(result, as_json, render)

    @bench.command("online-replay")
    @dataset_options
    @click.option("--model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
                  help="Trained session encoder artifact the worker serves (its id vectors too).")
    @click.option("--users", type=click.IntRange(min=1), default=200, show_default=True,
                  help="Held-out shoppers of the test fold to replay (a seeded sample).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--broker", default=None, help="Kafka to use (default: start the embedded broker).")
    @click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=600.0, show_default=True,
                  help="Seconds to wait for the recommendations after the last event is sent.")
    @click.option("--json", "as_json", is_flag=True)
    def online_replay(data, model, users, seed, broker, timeout_s, as_json) -> None:
        """Held-out shoppers through Kafka into a worker: online NDCG@10 next to shopstream eval's figure."""
        from stream.tools.bench_replay import render, run_online_replay
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()
        emit(run_online_replay(data, model, users=users, seed=seed, broker=broker, timeout_s=timeout_s),
             as_json, render)

    @bench.command("chaos")
    @click.option("--kills", type=click.IntRange(min=0), default=20, show_default=True,
                  help="SIGKILLs of a worker at random moments, each followed by a restart.")
    @click.option("--events", "n_events", type=click.IntRange(min=10), default=3000, show_default=True,
                  help="Messages sent, malformed ones included.")
    @click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--rate", type=click.FloatRange(min=1), default=20.0, show_default=True,
                  help="Offered messages per second.")
    @click.option("--pause", "pause_s", type=click.FloatRange(min=0), default=10.0, show_default=True,
                  help="Seconds the broker is paused (SIGSTOP) once.")
    @click.option("--disk-fault", "disk_fault_s", type=click.FloatRange(min=0), default=15.0, show_default=True,
                  help="Seconds one worker's state disk refuses every write (its file-size limit lowered); 0: never.")
    @click.option("--malformed-share", type=click.FloatRange(0, 0.5), default=0.10, show_default=True)
    @click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--settle-timeout", type=click.FloatRange(min=10), default=300.0, show_default=True,
                  help="Seconds to wait after the last send for every message to be accounted for.")
    @click.option("--json", "as_json", is_flag=True)
    def chaos(kills, n_events, workers, rate, pause_s, disk_fault_s, malformed_share, partitions, seed,
              settle_timeout, as_json) -> None:
        """Kills, a paused broker, a failing state disk, catalogue churn, malformed input: count what is
        lost (nothing)."""
        from stream.tools.chaos import ChaosPlan, render, run_chaos_bench
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()
        plan = ChaosPlan(events=n_events, rate=rate, workers=workers, kills=kills, pause_s=pause_s,
                         disk_fault_s=disk_fault_s,
                         malformed_share=malformed_share, seed=seed, settle_timeout_s=settle_timeout)
        result = run_chaos_bench(plan, partitions=partitions,
                                 echo=(lambda s: click.echo(s, err=True)) if as_json else click.echo)
        emit(result.to_dict(), as_json, lambda r: click.echo(render(r)))
        if not result.ok:
            raise SystemExit(1)

    @bench.command("recovery")
    @click.option("--sessions", type=click.IntRange(min=1), default=20_000, show_default=True)
    @click.option("--store", "stores", multiple=True, type=click.Choice(["memory", "rocksdb"]),
                  help="Only these stores (repeatable; default: both, side by side).")
    @click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True)
    @click.option("--worker-fill-max", type=click.IntRange(min=0), default=20_000, show_default=True,
                  help="Fill through the worker up to this many sessions; beyond, write the changelog directly.")
    @click.option("--broker", default=None, help="Kafka to use (default: start the embedded broker).")
    @click.option("--restarts/--no-restarts", default=True, show_default=True,
                  help="After the first start, restart after SIGTERM and after SIGKILL (--no-restarts: the "
                       "empty-disk restore only).")
    @click.option("--json", "as_json", is_flag=True)
    def recovery(sessions, stores, partitions, worker_fill_max, broker, restarts, as_json) -> None:
        """Fill N sessions, restart the worker (SIGTERM, then SIGKILL): time to ready, changelog read, RSS."""
        from stream.tools.bench_recovery import STORES, render, run_recovery_bench
        from stream.tools.processes import terminate_on_sigterm

        terminate_on_sigterm()
        result = run_recovery_bench(sessions=sessions, stores=tuple(stores) or STORES, partitions=partitions,
                                    worker_fill_max=worker_fill_max, broker=broker, restarts=restarts,
                                    progress=(lambda line: None) if as_json else click.echo)
        emit(result, as_json, lambda r: click.echo(render(r)))

    @bench.command("encoder")
    @click.option("--backend", "backends", multiple=True,
                  type=click.Choice(["torch", "onnxruntime", "torch-cuda", "tensorrt"]),
                  help="Only these backends (repeatable; default: every one this machine runs).")
    @click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1),
                  help="Batch sizes (default 1, 8, 64, 256).")
    @click.option("--length", "lengths", multiple=True, type=click.IntRange(min=1, max=128),
                  help="Sequence lengths in tokens (default 16, 64).")
    @click.option("--min-time", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
                  help="Seconds of timed calls per configuration.")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
    @click.option("--artifacts", type=click.Path(path_type=Path), default=Path("var/bench/engines"),
                  show_default=True, help="Where missing ONNX Runtime artifacts are built for the run.")
    @click.option("--json", "as_json", is_flag=True)
    def encoder(backends, batches, lengths, min_time, threads, artifacts, as_json) -> None:
        """Each backend x precision x batch x length: seq/s, p50/p99, with and without tokenising."""
        from engines.bench import (
            BATCHES,
            LENGTHS,
            format_table,
            query_cache_hit_rates,
            run_encoder_bench,
        )
        from stream.tools.datasets import wands_queries
        from stream.tools.replay_data import shopper_events

        result = run_encoder_bench(backends or None, artifacts_dir=artifacts, batches=batches or BATCHES,
                                   lengths=lengths or LENGTHS, min_time_s=min_time, threads=threads)
        demo = [e.query for e in shopper_events() if e.query]     # the demo's whole replay stream
        result["query_cache"] = query_cache_hit_rates({"wands (each query once)": wands_queries(),
                                                       "demo stream (all searches)": demo})
        emit(result, as_json, lambda r: click.echo(format_table(r)))

    @bench.command("session")
    @click.option("--backend", "backends", multiple=True,
                  help="backend[/precision], repeatable (default: auto, onnxruntime fp32 and int8, torch).")
    @click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1),
                  help="Worker batch sizes (default 1, 16, 64, 256).")
    @click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all).")
    @click.option("--min-time", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def session(backends, batches, threads, min_time, as_json) -> None:
        """The session encoder (SHOPSTREAM_SESSION_ENCODER, default the shipped one): ms per worker batch."""
        from stream.settings import Settings
        from stream.tools.bench_session import render, run_session_bench

        pairs = [tuple((b + "/auto").split("/")[:2]) for b in backends]
        result = run_session_bench(Settings.from_env(), backends=pairs, batches=batches, threads=threads,
                                   min_time_s=min_time)
        emit(result, as_json, lambda r: click.echo(render(r)))

    @bench.command("index")
    @click.option("--items", type=click.IntRange(min=1000), default=100_000, show_default=True)
    @click.option("--dim", type=click.IntRange(min=8), default=384, show_default=True)
    @click.option("--kind", type=click.Choice(["auto", "flat", "hnsw", "ivf"]), default="auto", show_default=True)
    @click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
    @click.option("--queries", type=click.IntRange(min=100), default=1000, show_default=True)
    @click.option("--ef-search", type=click.IntRange(min=1), default=None, help="HNSW efSearch (default 64).")
    @click.option("--spread", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
                  help="Within-cluster spread of the synthetic vectors; larger is harder for HNSW and IVF.")
    @click.option("--json", "as_json", is_flag=True)
    def index_bench(items, dim, kind, device, queries, ef_search, spread, as_json) -> None:
        """Synthetic vectors: build time, queries/s at batch 1 and 64, recall@10, memory, updates/s."""
        from index.bench import render, run_index_bench
        from index.kinds import IndexParams

        params = IndexParams(hnsw_ef_search=ef_search) if ef_search else None
        result = run_index_bench(items=items, dim=dim, kind=kind, device=device, queries=queries, params=params,
                                 spread=spread)
        emit(result, as_json, lambda r: click.echo(render(r)))
