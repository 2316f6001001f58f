"""``export(cfg)``: fp32 / fp16 / int8 ONNX files, each validated and self-describing."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.files import MANIFEST_NAME, sha256_file, write_json_atomic
from medvit_edge.metadata import ModelMetadata
from medvit_edge.preprocess import PreprocessSpec

from .config import ExportConfig
from .validate import ValidationSet, compare, load_validation_set, onnx_logits, torch_logits
from .variants import fix_input_shape, hf_to_onnx, onnx_to_fp16, optimize_onnx, write_metadata


class ExportValidationError(RuntimeError):
    """At least one variant failed its tolerances (files are written and marked failed)."""


@dataclass
class ExportResult:
    output: Path
    manifest: dict[str, Any]

    @property
    def failed(self) -> list[str]:
        return [v["file"] for v in self.manifest["variants"] if v["status"] != "passed"]


@dataclass
class _Context:
    cfg: ExportConfig
    labels: list[str]
    spec: PreprocessSpec
    validation: ValidationSet
    reference: np.ndarray
    source_sha256: str
    versions: dict[str, str]
    created: str
    num_heads: int
    hidden_size: int
    fusions: dict[str, int] = field(default_factory=dict)


def export(cfg: ExportConfig) -> ExportResult:
    """Export every requested variant of ``cfg.run_dir`` into ``cfg.output`` and validate it."""
    ctx = _prepare(cfg)
    fp32_path = cfg.output / "model.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        # fp16 comes from the unfused graph (the CPU provider lacks fp16 kernels for some fused ops);
        # without --optimize that is model.onnx itself, so nothing is copied
        unfused = Path(scratch) / "unfused.onnx" if cfg.optimize else fp32_path
        entries = [_make_variant(ctx, "fp32", fp32_path, lambda: _build_fp32(ctx, fp32_path, unfused))]
        if cfg.fp16:
            fp16_path = cfg.output / "model.fp16.onnx"
            entries.append(_make_variant(ctx, "fp16", fp16_path, lambda: onnx_to_fp16(unfused, fp16_path)))
    if cfg.int8:
        from .guard import make_int8

        entries.append(make_int8(ctx, fp32_path, _make_variant))
    manifest = _manifest(ctx, entries)
    write_json_atomic(cfg.output / MANIFEST_NAME, manifest)
    result = ExportResult(cfg.output, manifest)
    if result.failed and not cfg.allow_degraded:
        raise ExportValidationError(
            f"variants outside tolerance: {', '.join(result.failed)} (see {cfg.output / MANIFEST_NAME}); "
            "rerun with --allow-degraded to keep them anyway"
        )
    return result


def _build_fp32(ctx: _Context, path: Path, unfused_copy: Path) -> None:
    """Optimum's export with pinned input dims; with --optimize, a copy before fusion, then the fusions."""
    hf_to_onnx(ctx.cfg.run_dir, ctx.cfg.output, ctx.cfg.opset)
    fix_input_shape(path, ctx.spec.size)
    if ctx.cfg.optimize:
        shutil.copyfile(path, unfused_copy)
        ctx.fusions = optimize_onnx(path, ctx.num_heads, ctx.hidden_size)


def _prepare(cfg: ExportConfig) -> _Context:
    from transformers import AutoModelForImageClassification

    from medvit_edge.train.models import resolve_spec

    model = AutoModelForImageClassification.from_pretrained(cfg.run_dir, use_safetensors=True).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    spec = resolve_spec(str(cfg.run_dir))
    cfg.output.mkdir(parents=True, exist_ok=True)
    validation = load_validation_set(cfg, spec, labels)
    _log(f"validating on {len(validation.keys)} images from {validation.source}")
    reference = torch_logits(model, validation.pixels, cfg.batch_size)
    weights = sorted(cfg.run_dir.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{cfg.run_dir}: no safetensors weights (only safetensors are loaded)")
    return _Context(
        cfg=cfg,
        labels=labels,
        spec=spec,
        validation=validation,
        reference=reference,
        source_sha256=sha256_file(weights[0]),
        versions=_versions(),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        num_heads=model.config.num_attention_heads,
        hidden_size=model.config.hidden_size,
    )


def _make_variant(
    ctx: _Context,
    variant: str,
    path: Path,
    build: Callable[[], Any],
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one file, stamp its metadata, validate it against PyTorch; return its manifest entry."""
    _log(f"exporting {variant} -> {path}")
    started = time.perf_counter()
    built = build()
    quantization = quantization or (built if isinstance(built, dict) else {})
    metadata = ModelMetadata(
        labels=tuple(ctx.labels),
        preprocess=ctx.spec,
        variant=variant,
        source_sha256=ctx.source_sha256,
        versions=ctx.versions,
        created=ctx.created,
        quantization=quantization,
    )
    write_metadata(path, metadata)
    seconds = time.perf_counter() - started
    kind = variant.split("-")[0]
    logits = onnx_logits(path, ctx.validation.pixels, ctx.cfg.batch_size)
    check = compare(
        ctx.reference,
        logits,
        ctx.validation.label_ids,
        ctx.labels,
        ctx.cfg.tolerances[kind],
        ctx.cfg.guard_classes,
    )
    status = "passed" if check["passed"] else "failed"
    _log(
        f"  {variant}: {status}; max |Δlogit| {check['max_abs_logit_diff']:.2e}, "
        f"agreement {check['top1_agreement']:.2%}" + "".join(f"; {f}" for f in check["failures"])
    )
    return {
        "file": path.name,
        "variant": variant,
        "status": status,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "export_seconds": round(seconds, 2),
        "validation": check,
        **({"quantization": quantization} if quantization else {}),
    }


def _manifest(ctx: _Context, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": 1,
        "source": str(ctx.cfg.run_dir),
        "source_sha256": ctx.source_sha256,
        "labels": ctx.labels,
        "preprocess": ctx.spec.to_dict(),
        "created": ctx.created,
        "versions": ctx.versions,
        "validation_data": {
            "source": ctx.validation.source,
            "images": len(ctx.validation.keys),
            "labelled": ctx.validation.label_ids is not None,
        },
        "graph_fusions": ctx.fusions,
        "variants": entries,
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in (
        "medvit-edge",
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
    ):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
