"""``export(cfg)``: one ``Exporter`` with a method per row of the variants table.

Every file is stamped with its metadata and then validated through the runtime's own
``Classifier`` (the path users run), against the PyTorch model on the same real images
(``ExportContext.finish``). That loaded file is then timed and gives its golden expectations:
each variant is read and hashed once.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from medvit_edge.errors import UserError
from medvit_edge.evaluation.metrics import classification_metrics
from medvit_edge.runtime.manifest import MANIFEST_NAME, Manifest, VariantRecord
from medvit_edge.runtime.recommend import LATENCY_RUNS, classifier_ms, recommend
from medvit_edge.runtime.variants import VARIANTS, Variant

from .card import write_folder_card
from .config import ExportConfig
from .context import ExportContext
from .explain import add_attention_outputs
from .golden import choose_golden_frames, expected, write_golden
from .int8 import guarded_int8, openvino_build
from .merged import build_merged, check_merging, resolve_merging
from .openvino import onnx_to_openvino
from .raw import add_raw_input
from .run_folder import model_files, remove_unvalidated
from .variants import fix_input_shape, hf_to_onnx, onnx_to_fp16, optimize_onnx

logger = logging.getLogger(__name__)


class ExportValidationError(UserError):
    """At least one variant failed its tolerances (files are written and marked failed); exit 1."""

    exit_code = 1


@dataclass
class ExportResult:
    output: Path
    manifest: Manifest
    # the PyTorch model's own metrics on the labelled validation images (None: no labels)
    pytorch_metrics: dict[str, Any] | None = None

    @property
    def failed(self) -> list[str]:
        return [v.file for v in self.manifest.variants if v.status != "passed"]


def export(cfg: ExportConfig) -> ExportResult:
    """Export every requested variant of ``cfg.run_dir`` into ``cfg.output`` and validate it.
    An export that stops (an error, Ctrl-C) removes the model files it wrote: a file no manifest
    vouches for must not be found and deployed."""
    assert cfg.output is not None  # ExportConfig defaults it to RUN_DIR/onnx
    before = model_files(cfg.output)
    try:
        return _export(cfg)
    except ExportValidationError:
        raise  # every file was validated and the manifest marks the failed ones
    except BaseException:
        remove_unvalidated(cfg.output, before)
        raise


def _export(cfg: ExportConfig) -> ExportResult:
    ctx = ExportContext.prepare(cfg)
    check_merging(ctx)  # a bad schedule fails before any variant is built
    pytorch_metrics = _model_quality(ctx)
    choose_golden_frames(ctx)
    exporter = Exporter(ctx)
    with tempfile.TemporaryDirectory() as scratch:
        ctx.scratch = Path(scratch)
        variants = [VARIANTS[name] for name in cfg.requested_variants()]
        # merged twins only once their schedule is known (auto may find none that passes)
        records = [exporter.build(v) for v in variants if not v.merged or resolve_merging(ctx)]
    assert cfg.output is not None
    # the fastest eligible, as timed above
    records, recommended = recommend(cfg.output, records, size=ctx.spec.size)
    manifest = replace(ctx.manifest(records), recommended=recommended)
    manifest = write_golden(ctx, manifest)  # + onnx/golden/ for `check`
    manifest.write(cfg.output)
    write_folder_card(cfg.output, manifest, ctx.governance)
    result = ExportResult(cfg.output, manifest, pytorch_metrics)
    if result.failed and not cfg.allow_degraded:
        raise ExportValidationError(
            f"variants outside tolerance: {', '.join(result.failed)} (see {cfg.output / MANIFEST_NAME}); "
            "rerun with --allow-degraded to keep them anyway"
        )
    return result


def _model_quality(ctx: ExportContext) -> dict[str, Any] | None:
    """A file "passed" when it gives the PyTorch model's results; whether that model is any good
    is its accuracy on the labelled validation images, which the CLI prints beside the
    majority-class baseline (medvit_edge.evaluation.verdict)."""
    label_ids = ctx.validation.label_ids
    if label_ids is None:
        return None
    return classification_metrics(label_ids, ctx.reference.argmax(axis=1), ctx.labels)


class Exporter:
    """Builds one variant per method; ``build`` dispatches a table row to its method, then times
    the validated file and records its golden expectations while it is still loaded."""

    def __init__(self, ctx: ExportContext):
        self.ctx = ctx

    def build(self, variant: Variant) -> VariantRecord:
        method: Callable[[Variant], VariantRecord]
        if variant.merged:  # token-merged twins (export/merged.py); their raw twins as any other
            method = self.raw_twin if variant.base else partial(build_merged, self.ctx)
        else:
            method = getattr(self, variant.name.replace("-", "_"))
        logger.info("exporting %s -> %s", variant.name, self.ctx.path(variant))
        record = method(variant)
        classifier = self.ctx.loaded.pop(variant.name)  # the file as validated: one load for all
        if record.status == "passed":
            record = replace(record, latency_ms=round(classifier_ms(classifier, LATENCY_RUNS), 3))
        if self.ctx.golden_frames:
            self.ctx.golden_expected[variant.name] = expected(classifier, record, self.ctx.golden_frames)
        return record

    # -- one method per row of the variants table ------------------------------------------------

    def fp32(self, variant: Variant) -> VariantRecord:
        """Optimum's export with pinned input dims; with --optimize, the fusions after a copy."""
        ctx, started = self.ctx, time.perf_counter()
        hf_to_onnx(ctx.cfg.run_dir, ctx.cfg.output, ctx.cfg.opset)  # type: ignore[arg-type]
        fix_input_shape(ctx.fp32_path, ctx.spec.size)
        if ctx.cfg.optimize:
            shutil.copyfile(ctx.fp32_path, ctx.unfused_path)
            ctx.fusions = optimize_onnx(ctx.fp32_path, ctx.num_heads, ctx.hidden_size)
        return ctx.finish(variant, started)

    def fp16(self, variant: Variant) -> VariantRecord:
        started = time.perf_counter()
        onnx_to_fp16(self.ctx.unfused_path, self.ctx.path(variant))
        return self.ctx.finish(variant, started)

    def int8_dynamic(self, variant: Variant) -> VariantRecord:
        return guarded_int8(self.ctx, variant)

    def int8_static(self, variant: Variant) -> VariantRecord:
        return guarded_int8(self.ctx, variant)

    def fp32_raw(self, variant: Variant) -> VariantRecord:
        return self.raw_twin(variant)

    def fp16_raw(self, variant: Variant) -> VariantRecord:
        return self.raw_twin(variant)

    def int8_dynamic_raw(self, variant: Variant) -> VariantRecord:
        return self.raw_twin(variant)

    def int8_static_raw(self, variant: Variant) -> VariantRecord:
        return self.raw_twin(variant)

    def explain(self, variant: Variant) -> VariantRecord:
        """The unfused fp32 graph with each layer's attention probabilities as extra outputs
        after the logits (export/explain.py); validated like fp32."""
        started = time.perf_counter()
        add_attention_outputs(self.ctx.unfused_path, self.ctx.path(variant), self.ctx.num_heads)
        return self.ctx.finish(variant, started)

    def openvino_fp32(self, variant: Variant) -> VariantRecord:
        """model.onnx as an OpenVINO IR (export/openvino.py)."""
        started = time.perf_counter()
        onnx_to_openvino(self.ctx.unfused_path, self.ctx.path(variant))
        return self.ctx.finish(variant, started)

    def openvino_int8(self, variant: Variant) -> VariantRecord:
        """NNCF post-training int8 of the IR, under the int8 guard (NNCF's ignored scope)."""
        ctx = self.ctx
        # ranked on the graph NNCF quantizes (the unfused one with --optimize): same layer names
        build = openvino_build(ctx, variant, ctx.unfused_path)
        return guarded_int8(ctx, variant, build, ctx.unfused_path)

    def raw_twin(self, variant: Variant) -> VariantRecord:
        """The base variant's file (as built above) with the preprocessing graph in front and a
        decision policy behind (export/raw.py); validated on the decoded images against PyTorch on the
        numpy path's tensors, so the in-graph resize's differences count."""
        started = time.perf_counter()
        assert variant.base is not None
        ctx = self.ctx
        props = add_raw_input(
            ctx.path(VARIANTS[variant.base]), ctx.path(variant), ctx.spec, ctx.policy, ctx.labels
        )
        quantization = json.loads(props["quantization"]) if "quantization" in props else None
        return self.ctx.finish(variant, started, quantization)
