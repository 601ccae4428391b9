"""docker/: no Docker engine runs here, so check what can be checked -- the compose file and the
Dockerfiles parse and reference files that exist, bases are pinned, the user is not root, health
checks are there, and every command they run works outside Docker."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _instructions(name: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _cli(args: list[str], env: dict | None = None):
    from stream.cli import _register, cli

    _register()
    return CliRunner().invoke(cli, args, catch_exceptions=False, env=env)


def _pinned(image: str) -> bool:
    name, _, tag = image.partition(":")
    return bool(tag) and tag != "latest" and bool(re.search(r"\d+\.\d+", tag))


def test_compose_has_kraft_kafka_topics_two_workers_and_prometheus():
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "prometheus", "learn", "registry"} <= services.keys()
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka)
    for name, svc in services.items():
        if "build" in svc:
            assert (REPO / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        else:
            assert _pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name} mounts {source}, which does not exist"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
    for worker in ("worker-1", "worker-2"):
        svc = services[worker]
        assert svc["command"] == ["worker"] and svc["environment"]["SHOPSTREAM_BROKER"] == "kafka:9092"
        assert "/ready" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"]), "published on localhost only"
    assert services["worker-1"]["environment"]["SHOPSTREAM_APP_ID"] == services["worker-2"]["environment"]["SHOPSTREAM_APP_ID"]

    # the fleet: learn writes the registry volume, the workers read it over HTTP
    learn, registry = services["learn"], services["registry"]
    assert learn["command"][0] == "learn" and learn["environment"]["SHOPSTREAM_REGISTRY"] == "file:///registry"
    assert "registry:/registry" in learn["volumes"] and "registry:/registry:ro" in registry["volumes"]
    assert "registry" in compose["volumes"] and "8080" in registry["command"]
    assert services["publish-index"]["command"] == ["index", "publish"]
    for worker in ("worker-1", "worker-2"):
        env = services[worker]["environment"]
        assert env["SHOPSTREAM_REGISTRY"] == "http://registry:8080" and env["SHOPSTREAM_BROKER"] == "kafka:9092"
        assert services[worker]["depends_on"]["registry"]["condition"] == "service_healthy"
        assert learn["environment"]["SHOPSTREAM_APP_ID"] == env["SHOPSTREAM_APP_ID"]
    from stream.settings import Settings

    for svc in (learn, services["worker-1"]):
        Settings.from_env({k: str(v) for k, v in svc["environment"].items()})   # every setting parses

    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"worker-1:6066", "worker-2:6066"}
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_pinned_non_root_healthchecked_and_copies_what_exists(name):
    steps = _instructions(name)
    base = next(arg for op, arg in steps if op == "FROM")
    assert _pinned(base), f"base image {base} is not pinned"
    users = [arg for op, arg in steps if op == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the worker must not run as root"
    health = [arg for op, arg in steps if op == "HEALTHCHECK"]
    assert health and "/health" in health[0]
    code = re.search(r'"-c", "(.+?)"\]', health[0]).group(1)
    compile(code, "healthcheck", "exec")
    for op, arg in steps:
        if op == "COPY":
            *sources, _ = arg.split()
            for src in sources:
                assert (REPO / src).exists(), f"{name} copies {src}, which does not exist"
    assert ("ENTRYPOINT", '["shopstream"]') in steps and ("CMD", '["worker"]') in steps
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "SHOPSTREAM_WEB_PORT=6066" in env and "SHOPSTREAM_WEB_HOST=0.0.0.0" in env


def test_every_command_the_images_run_works_outside_docker():
    commands = [svc["command"] for svc in _compose()["services"].values() if "build" in svc or
                svc.get("image", "").startswith("shopstream")]
    for name in DOCKERFILES:
        for op, arg in _instructions(name):
            if op == "RUN":
                for part in arg.split("&&"):
                    words = shlex.split(part)
                    if words and words[0] == "shopstream":
                        commands.append(words[1:])
            if op == "CMD":
                commands.append(yaml.safe_load(arg))
    assert ["worker"] in commands and ["topics"] in commands
    for command in commands:
        result = _cli([*command, "--help"])
        assert result.exit_code == 0, f"shopstream {' '.join(command)}: {result.output}"


def test_topics_step_creates_every_topic(settings_factory):
    from stream.errors import ConfigError
    from stream.ops.topics import topic_specs

    settings = settings_factory()
    env = {"SHOPSTREAM_EVENTS_TOPIC": settings.events_topic, "SHOPSTREAM_CATALOG_TOPIC": settings.catalog_topic,
           "SHOPSTREAM_RECOMMENDATIONS_TOPIC": settings.recommendations_topic,
           "SHOPSTREAM_DEAD_LETTER_TOPIC": settings.dead_letter_topic, "SHOPSTREAM_MODELS_TOPIC": settings.models_topic}
    result = _cli(["topics", "--broker", settings.broker, "--app-id", settings.app_id, "--partitions", "3"], env)
    assert result.exit_code == 0, result.output
    created = dict(line.split("\t")[:2] for line in result.stdout.splitlines())   # name, partitions, configs
    assert set(created) == {s.name for s in topic_specs(settings.replace(partitions=3))}
    assert created[settings.events_topic] == "3 partition(s)"
    with pytest.raises(ConfigError, match="has 3 partitions"):
        _cli(["topics", "--broker", settings.broker, "--app-id", settings.app_id, "--partitions", "5"], env)
