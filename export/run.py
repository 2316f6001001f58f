"""``export(cfg)``: one ``Exporter`` with a method per row of the variants table.

Every file is stamped with its metadata and then validated through the runtime's own
``Classifier`` (the path users run), against the PyTorch model on the same real images.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.checkpoint import load_spec
from medvit_edge.errors import UserError
from medvit_edge.files import sha256_file
from medvit_edge.manifest import MANIFEST_NAME, Manifest, MergeReport, Validation, VariantRecord
from medvit_edge.metadata import ModelMetadata
from medvit_edge.recommend import recommend
from medvit_edge.runtime import Classifier
from medvit_edge.train.merging import MergePlan
from medvit_edge.variants import VARIANTS, Variant

from .card import read_governance, write_folder_card
from .config import ExportConfig
from .explain import add_attention_outputs
from .golden import write_golden
from .int8 import guarded_int8
from .merged import build_merged, check_merging, resolve_merging
from .openvino import build_openvino_fp32, openvino_int8_builder, write_ir_metadata
from .policy import export_policy
from .raw import add_raw_input, check_spec
from .validate import compare, load_validation_set, torch_logits
from .variants import fix_input_shape, hf_to_onnx, onnx_to_fp16, optimize_onnx, write_metadata

logger = logging.getLogger(__name__)


class ExportValidationError(UserError):
    """At least one variant failed its tolerances (files are written and marked failed); exit 1."""

    exit_code = 1


@dataclass
class ExportResult:
    output: Path
    manifest: Manifest

    @property
    def failed(self) -> list[str]:
        return [v.file for v in self.manifest.variants if v.status != "passed"]


def export(cfg: ExportConfig) -> ExportResult:
    """Export every requested variant of ``cfg.run_dir`` into ``cfg.output`` and validate it."""
    exporter = Exporter(cfg)
    with tempfile.TemporaryDirectory() as scratch:
        exporter.scratch = Path(scratch)
        variants = [VARIANTS[name] for name in cfg.requested_variants()]
        # merged twins only once their schedule is known (auto may find none that passes)
        records = [exporter.build(v) for v in variants if not v.merged or resolve_merging(exporter)]
    assert cfg.output is not None
    records, recommended = recommend(cfg.output, records)  # each passed variant timed on this machine
    manifest = replace(exporter.manifest(records), recommended=recommended)
    manifest = write_golden(exporter, manifest)  # + onnx/golden/ for `check`
    manifest.write(cfg.output)
    write_folder_card(cfg.output, manifest, exporter.governance)
    result = ExportResult(cfg.output, manifest)
    if result.failed and not cfg.allow_degraded:
        raise ExportValidationError(
            f"variants outside tolerance: {', '.join(result.failed)} (see {cfg.output / MANIFEST_NAME}); "
            "rerun with --allow-degraded to keep them anyway"
        )
    return result


class Exporter:
    """Holds what every variant needs (the PyTorch reference, the validation images, provenance)
    and builds one variant per method; ``build`` dispatches a table row to its method."""

    def __init__(self, cfg: ExportConfig):
        from transformers import AutoModelForImageClassification

        self.cfg = cfg
        weights = sorted(cfg.run_dir.glob("*.safetensors"))
        if not weights:
            raise UserError(f"{cfg.run_dir}: no safetensors weights (only safetensors are loaded)")
        model = AutoModelForImageClassification.from_pretrained(cfg.run_dir, use_safetensors=True).eval()
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.spec = load_spec(cfg.run_dir)
        if cfg.raw_input:
            check_spec(self.spec)  # before any variant is built
        cfg.output.mkdir(parents=True, exist_ok=True)
        self.validation = load_validation_set(cfg, self.spec, self.labels)
        logger.info("validating on %d images from %s", len(self.validation.keys), self.validation.source)
        self.reference = torch_logits(model, self.validation.pixels, cfg.batch_size)
        self.policy = export_policy(cfg, self.reference, self.validation, self.labels)  # one for all
        self.source_sha256 = sha256_file(weights[0])
        self.versions = _versions()
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.governance = read_governance(cfg.run_dir, cfg.model_version)
        self.num_heads, self.hidden_size = model.config.num_attention_heads, model.config.hidden_size
        self.fusions: dict[str, int] = {}
        self.scratch = Path(tempfile.gettempdir())
        self.model = model  # the unmerged reference, for token-merged twins (export/merged.py)
        self.merge_plan: MergePlan | None = None
        self.merge_report: MergeReport | None = None
        check_merging(self)  # a bad schedule fails before any variant is built

    def build(self, variant: Variant) -> VariantRecord:
        if variant.merged:
            return build_merged(self, variant)
        method: Callable[[Variant], VariantRecord] = getattr(self, variant.name.replace("-", "_"))
        logger.info("exporting %s -> %s", variant.name, self.path(variant))
        return method(variant)

    def path(self, variant: Variant) -> Path:
        assert self.cfg.output is not None
        if variant.merged:
            assert self.merge_plan is not None
            return self.cfg.output / variant.file_for(self.merge_plan.tag)
        return self.cfg.output / variant.file_name

    @property
    def fp32_path(self) -> Path:
        return self.path(VARIANTS["fp32"])

    @property
    def unfused_path(self) -> Path:
        """fp16 comes from the unfused graph (the CPU provider lacks fp16 kernels for some fused
        ops); without --optimize that is model.onnx itself, so nothing is copied."""
        return self.scratch / "unfused.onnx" if self.cfg.optimize else self.fp32_path

    # -- one method per row of the variants table ------------------------------------------------

    def fp32(self, variant: Variant) -> VariantRecord:
        """Optimum's export with pinned input dims; with --optimize, the fusions after a copy."""
        started = time.perf_counter()
        hf_to_onnx(self.cfg.run_dir, self.cfg.output, self.cfg.opset)  # type: ignore[arg-type]
        fix_input_shape(self.fp32_path, self.spec.size)
        if self.cfg.optimize:
            shutil.copyfile(self.fp32_path, self.unfused_path)
            self.fusions = optimize_onnx(self.fp32_path, self.num_heads, self.hidden_size)
        return self.finish(variant, started)

    def fp16(self, variant: Variant) -> VariantRecord:
        started = time.perf_counter()
        onnx_to_fp16(self.unfused_path, self.path(variant))
        return self.finish(variant, started)

    def int8_dynamic(self, variant: Variant) -> VariantRecord:
        return guarded_int8(self, variant)

    def int8_static(self, variant: Variant) -> VariantRecord:
        return guarded_int8(self, variant)

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
        add_attention_outputs(self.unfused_path, self.path(variant), self.num_heads)
        return self.finish(variant, started)

    def openvino_fp32(self, variant: Variant) -> VariantRecord:
        """model.onnx as an OpenVINO IR (export/openvino.py)."""
        return build_openvino_fp32(self, variant)

    def openvino_int8(self, variant: Variant) -> VariantRecord:
        """NNCF post-training int8 of the IR, under the int8 guard (NNCF's ignored scope)."""
        # ranked on the graph NNCF quantizes (the unfused one with --optimize): same layer names
        return guarded_int8(self, variant, openvino_int8_builder(self, variant), self.unfused_path)

    def raw_twin(self, variant: Variant) -> VariantRecord:
        """The base variant's file (as built above) with the preprocessing graph in front and a
        softmax behind (export/raw.py); validated on the decoded images against PyTorch on the
        numpy path's tensors, so the in-graph resize's differences count."""
        started = time.perf_counter()
        assert variant.base is not None
        props = add_raw_input(self.path(VARIANTS[variant.base]), self.path(variant), self.spec)
        quantization = json.loads(props["quantization"]) if "quantization" in props else None
        return self.finish(variant, started, quantization)

    # -- shared by every variant ------------------------------------------------------------------

    def finish(
        self, variant: Variant, started: float, quantization: dict[str, Any] | None = None
    ) -> VariantRecord:
        """Stamp the metadata, validate through the runtime, and make the manifest record."""
        path = self.path(variant)
        metadata = ModelMetadata(
            labels=tuple(self.labels),
            preprocess=self.spec,
            variant=variant.name,
            source_sha256=self.source_sha256,
            versions=self.versions,
            created=self.created,
            quantization=quantization or {},
            input=variant.input,
            **self.governance.metadata_fields(),
            policy=self.policy,
            token_merging=self.merge_plan.to_dict() if variant.merged and self.merge_plan else {},
        )
        (write_ir_metadata if path.suffix == ".xml" else write_metadata)(path, metadata)
        seconds = time.perf_counter() - started
        classifier = Classifier.load(path, device="cpu", verify=False)  # hashes the file it loads
        check = self.validate(variant, classifier)
        status = "passed" if check.passed else "failed"
        logger.info(
            "  %s: %s; max |Δlogit| %.2e, agreement %.2f%%%s",
            variant.name,
            status,
            check.max_abs_logit_diff,
            100 * check.top1_agreement,
            "".join(f"; {f}" for f in check.failures),
        )
        return VariantRecord(
            file=path.name,
            variant=variant.name,
            status=status,
            sha256=classifier.sha256,  # of the very bytes that were validated
            size_bytes=classifier.size_bytes,  # an IR's .bin included
            export_seconds=round(seconds, 2),
            validation=check,
            quantization=quantization or {},
            companions=classifier.companions,  # an IR's weights, as validated
        )

    def validate(self, variant: Variant, classifier: Classifier) -> Validation:
        logits = self.logits(classifier)
        return compare(
            self.reference,
            logits,
            self.validation.label_ids,
            self.labels,
            self.cfg.tolerances[variant.name],
            self.cfg.guard_classes,
        )

    def logits(self, classifier: Classifier) -> np.ndarray:
        """The file's logits on the validation images, as the runtime computes them (one image
        per call for dynamic int8, chunks otherwise)."""
        if classifier.raw_input:
            return classifier.run_raw(self.validation.frames).astype(np.float32)
        return classifier.run(self.validation.pixels).astype(np.float32)

    def manifest(self, records: list[VariantRecord]) -> Manifest:
        return Manifest(
            source=str(self.cfg.run_dir),
            source_sha256=self.source_sha256,
            labels=tuple(self.labels),
            preprocess=self.spec.to_dict(),
            created=self.created,
            versions=self.versions,
            validation_data={
                "source": self.validation.source,
                "images": len(self.validation.keys),
                "labelled": self.validation.label_ids is not None,
            },
            graph_fusions=self.fusions,
            variants=tuple(records),
            decision_policy=self.policy,
            token_merging=self.merge_report,
        )


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
        "openvino",
        "nncf",
    ):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions
