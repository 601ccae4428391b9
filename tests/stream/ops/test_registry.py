"""The artifact registry on its own: URLs, content addresses, the sha256 check, safe unpacking,
one-line errors -- over a real HTTP server on localhost and on file://."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import orjson
import pytest

from stream.errors import ConfigError, RegistryError
from stream.ops.models import ModelRecord, now_iso, read_log
from stream.ops.registry import Registry, artifact_key, parse_registry_url


@pytest.fixture
def http_registry(tmp_path):
    """A folder served by Python's http.server on a random localhost port: (folder, URL, server)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}/", server
    server.shutdown()
    server.server_close()


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "artifact"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4000)
    (folder / "sub" / "manifest.json").write_text('{"model_version": "v1"}')
    return folder


@pytest.mark.parametrize("url, why", [
    ("ftp:/nowhere", "neither a URL"), ("nosuch://x/y", "unknown protocol"), ("http://", "no host"),
    ("http://host:99999/x", "bad port"), ("file://relative/path", "file:///absolute"), ("s3://", "no bucket"),
    ("   ", "must not be empty"),
])
def test_malformed_registry_urls_are_one_line_config_errors(url, why):
    with pytest.raises(ConfigError, match=why):
        parse_registry_url(url)


def test_plain_folder_is_a_file_url(tmp_path):
    assert parse_registry_url(str(tmp_path)) == f"file://{tmp_path}"
    assert parse_registry_url(f"file://{tmp_path}/") == f"file://{tmp_path}"


def test_published_on_file_fetched_over_http_verified_and_cached(http_registry, artifact, tmp_path):
    served, url, _ = http_registry
    out = Registry(f"file://{served}", tmp_path / "writer-cache").publish(artifact, "model", "v1")
    assert out.key == artifact_key("model", out.sha256)
    assert hashlib.sha256((served / out.key).read_bytes()).hexdigest() == out.sha256
    manifest = orjson.loads((served / f"model/{out.sha256}.json").read_bytes())
    assert manifest["sha256"] == out.sha256 and {f["path"] for f in manifest["files"]} == {"weights.bin", "sub/manifest.json"}
    # the same files publish to the same address (deterministic tar)
    assert Registry(f"file://{served}", tmp_path / "c").publish(artifact, "model", "v1").sha256 == out.sha256

    reader = Registry(url, tmp_path / "host-cache")
    got = reader.fetch(out.key, out.sha256)
    assert (got / "weights.bin").read_bytes() == (artifact / "weights.bin").read_bytes()
    assert reader.fetched_bytes == out.size
    assert reader.fetch(out.key, out.sha256) == got and reader.fetched_bytes == out.size   # from the cache


def test_tampered_missing_outside_and_unsafe_artifacts_are_refused(http_registry, artifact, tmp_path):
    served, url, _ = http_registry
    out = Registry(f"file://{served}", tmp_path / "w").publish(artifact, "model", "v1")
    raw = bytearray((served / out.key).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (served / out.key).write_bytes(bytes(raw))
    reader = Registry(url, tmp_path / "host-cache")
    with pytest.raises(RegistryError, match="hash to sha256") as exc:
        reader.fetch(out.key, out.sha256)
    assert exc.value.reason == "sha256" and not (tmp_path / "host-cache" / out.sha256).exists()

    for key, sha in ((f"../model/{out.sha256}.tar", out.sha256), (f"/etc/{out.sha256}.tar", out.sha256),
                     (out.key, "0" * 64), ("http://elsewhere/model.tar", out.sha256)):
        with pytest.raises(RegistryError) as exc:
            reader.fetch(key, sha)
        assert exc.value.reason == "address", key

    with pytest.raises(RegistryError) as exc:
        reader.fetch(artifact_key("model", "1" * 64), "1" * 64)
    assert exc.value.reason == "missing"

    # a tar that hashes right but would write outside the cache
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    (served / "model" / f"{sha}.tar").write_bytes(buf.getvalue())
    with pytest.raises(RegistryError, match="not a plain file inside") as exc:
        reader.fetch(artifact_key("model", sha), sha)
    assert exc.value.reason == "archive" and not (tmp_path / "escaped.txt").exists()


def test_unreachable_registry_is_one_line(tmp_path):
    with pytest.raises(RegistryError) as exc:
        Registry("http://127.0.0.1:9/reg", tmp_path).fetch(artifact_key("model", "2" * 64), "2" * 64)
    assert exc.value.reason == "unreachable" and "\n" not in str(exc.value) and "127.0.0.1:9" in str(exc.value)


def test_models_records_of_any_shape_are_invalid_not_fatal():
    good = ModelRecord(version="v1", state="candidate", artifact="a", share=0.1, decided_at=now_iso())
    rows = [
        (b"v0", orjson.dumps({"version": ["a", "list"], "state": "default", "artifact": ""}), 0, 0),
        (b"v0", b"\xff not json", 0, 1),
        (b"v0", orjson.dumps({"state": "default"}), 0, 2),                        # no version
        (b"v0", orjson.dumps([1, 2]), 0, 3),
        (b"v9", ModelRecord(version="v9", state="default", artifact="", decided_at="9999-01-01T00:00:00Z").to_bytes(), 0, 4),
        (b"vx", ModelRecord(version="v1", state="default", artifact="").to_bytes(), 0, 5),   # key is not the version
        (b"v0", orjson.dumps({"version": "v0", "state": "default", "artifact": "", "share": "half"}), 0, 6),
        (None, good.to_bytes(), 0, 7),
        (b"\xff\xfe", b"{}", 0, 8),
        (b"v1", good.to_bytes(), 0, 9),
    ]
    records, bad = read_log(rows)
    assert records == {"v1": good}
    assert [b.offset for b in bad] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert "in the future" in bad[4].reason and "not JSON" in bad[1].reason


def test_bad_registry_settings_are_one_line_and_exit_2(index_snapshot, tmp_path, monkeypatch, capsys):
    from stream.cli import main

    monkeypatch.setenv("SHOPSTREAM_REGISTRY", "nosuch://x/y")
    with pytest.raises(SystemExit) as exc:
        main(["models", "--broker", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "unknown protocol 'nosuch'" in err

    monkeypatch.delenv("SHOPSTREAM_REGISTRY")
    for url, why in (("http://127.0.0.1:9/reg", "read-only over HTTP"),
                     (f"file://{tmp_path}/a-file/reg", "cannot publish to the registry")):
        (tmp_path / "a-file").write_text("not a folder")
        with pytest.raises(SystemExit) as exc:
            main(["index", "publish", str(index_snapshot), "--registry", url])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and why in err, err


@pytest.mark.parametrize("module", ["continuous_training", "promotion", "model_log", "models", "fleet", "registry"])
def test_learning_and_registry_modules_import_neither_cli_nor_live(module):
    """stream/ops/ sits below the commands and the live worker: what both need lives in
    stream/encoders.py (issue 25, item 5)."""
    import ast
    from pathlib import Path

    import stream

    tree = ast.parse((Path(stream.__file__).parent / "ops" / f"{module}.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith(("stream.cli", "stream.live"))], names


def test_rollback_sets_an_earlier_default_and_retires_the_current(settings_factory, monkeypatch, capsys):
    from stream.cli import main
    from stream.ops.model_log import announce, read_models
    from tests.conftest import run

    settings = settings_factory()
    old = ModelRecord(version="v-old", state="retired", artifact="", decided_at="2026-01-01T00:00:00Z")
    new = ModelRecord(version="v-new", state="default", artifact="", decided_at="2026-01-02T00:00:00Z")
    run(announce(settings, old, new))
    for name in ("events_topic", "recommendations_topic", "dead_letter_topic", "catalog_topic", "models_topic",
                 "app_id", "partitions"):                 # the test's own topics, never the default names
        monkeypatch.setenv(f"SHOPSTREAM_{name.upper()}", str(getattr(settings, name)))
    main(["models", "--broker", settings.broker, "--set-default", "v-old", "--reason", "worse online"])
    with pytest.raises(SystemExit) as exc:
        main(["models", "--broker", settings.broker, "--set-default", "v-none"])
    assert exc.value.code == 2
    out = capsys.readouterr().out
    assert "v-new -> retired" in out and "v-old -> default: worse online" in out
    models = run(read_models(settings))
    assert (models["v-old"].state, models["v-old"].decided_by, models["v-new"].state) == ("default", "operator", "retired")
