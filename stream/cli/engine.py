"""``shopstream engine build|info``: compile the text encoder into a versioned artifact."""
from __future__ import annotations

from pathlib import Path

import click

from stream.cli.options import path_option


def register(cli: click.Group) -> None:
    @cli.group("engine")
    def engine() -> None:
        """Build and inspect text-encoder engines (ONNX Runtime, TensorRT, torch)."""

    @engine.command("build")
    @click.option("--backend", required=True,
                  type=click.Choice(["tensorrt", "onnxruntime", "torch", "torch-cuda"]))
    @click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
                  help="Default: fp16 for GPU backends, fp32 for CPU ones.")
    @path_option("--out", default=None, help="Artifact folder (default: var/engines/<backend>-<precision>).")
    @path_option("--model-dir", default=None, help="Weights folder (default: the shipped all-MiniLM-L6-v2).")
    @click.option("--parity-texts", type=click.IntRange(min=16), default=512, show_default=True,
                  help="Catalogue titles the build checks against the PyTorch model.")
    def build(backend: str, precision: str | None, out: Path | None, model_dir: Path | None,
              parity_texts: int) -> None:
        """Export, compile, check parity on real catalogue titles, write the artifact."""
        from engines.artifact import read_manifest
        from engines.build import DEFAULT_PRECISION, build_engine

        precision = precision or DEFAULT_PRECISION[backend]
        out = out or Path("var") / "engines" / f"{backend}-{precision}"
        folder = build_engine(backend, out, precision=precision, model_dir=model_dir,
                              parity_texts=parity_texts)
        m = read_manifest(folder)
        p = m.parity
        click.echo(f"{m.backend} {m.precision} engine for {m.model_version} -> {folder}")
        click.echo(f"parity on {p['texts']} catalogue titles: max|diff| {p['max_abs_diff']:.2e}, "
                   f"cosine min {p['min_cosine']:.5f} mean {p['mean_cosine']:.5f}, "
                   f"top-10 overlap {p['top10_overlap']:.3f} ({p['rule']})")
        click.echo(f"run it with SHOPSTREAM_ENCODER_ARTIFACT={folder}")

    @engine.command("check")
    @click.argument("path", type=click.Path(path_type=Path))
    @click.option("--texts", "source", type=click.Choice(["catalogue", "wands"]), default="catalogue",
                  show_default=True, help="Catalogue titles, or the WANDS shoppers' search queries.")
    @click.option("-n", "n_texts", type=click.IntRange(min=16), default=512, show_default=True)
    @path_option("--model-dir", default=None, help="Weights folder of the reference model.")
    def check(path: Path, source: str, n_texts: int, model_dir: Path | None) -> None:
        """Compare an artifact with the PyTorch model again (exit 1 if it fails the rule)."""
        from engines.build import check_artifact

        texts = None
        if source == "wands":
            from stream.tools.datasets import wands_queries

            texts = wands_queries()[:n_texts]
        report = check_artifact(path, model_dir, n_texts=n_texts, texts=texts, strict=False)
        click.echo(f"{source}: {report}")
        if not report.passed:
            raise SystemExit(1)

    @engine.command("info")
    @click.argument("path", type=click.Path(path_type=Path))
    def info(path: Path) -> None:
        """Print an artifact's manifest."""
        import json
        from dataclasses import asdict

        from engines.artifact import read_manifest

        click.echo(json.dumps(asdict(read_manifest(path)), indent=2))

    @engine.command("choose")
    @path_option("--artifact", default=None, help="An artifact folder the worker would be given (default: "
                                                  "the one the worker finds, SHOPSTREAM_ENCODER_ARTIFACT or "
                                                  "the engine built into the data folder).")
    def choose(artifact: Path | None) -> None:
        """Say which backend `--backend auto` picks on this machine, and why."""
        from engines.select import choose_backend
        from stream.encoders import encoder_artifact
        from stream.settings import Settings

        if artifact is None:
            artifact = encoder_artifact(Settings.from_env().replace(encoder_backend="auto"))
        click.echo(choose_backend(artifact).describe())
