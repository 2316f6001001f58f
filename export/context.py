"""What every variant of one export needs, loaded once: the PyTorch reference's logits on the
validation images, the decision policy, provenance; and each variant's file loaded once through
the runtime's ``Classifier`` for its validation, its timing and its golden expectations.

The per-variant builders (``run``, ``int8``, ``openvino``, ``golden``) take this context, never
the ``Exporter`` that dispatches to them."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvit_edge.files import sha256_file
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.freshness import weights_sha256
from medvit_edge.runtime.manifest import Manifest, MergeReport, Validation, VariantRecord
from medvit_edge.runtime.metadata import ModelMetadata
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.preprocess import PreprocessSpec
from medvit_edge.runtime.variants import VARIANTS, Variant
from medvit_edge.system import software_versions
from medvit_edge.train.merging import MergePlan

from .card import Governance, read_governance
from .config import ExportConfig
from .policy import export_policy
from .raw import check_spec
from .run_folder import check_run_folder, load_model, load_run_spec
from .validate import ValidationSet, compare, load_validation_set, torch_logits
from .variants import write_ir_metadata, write_metadata

logger = logging.getLogger(__name__)
# the packages whose versions shape an exported file (recorded in its metadata)
EXPORT_SOFTWARE = (
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
)


@dataclass
class ExportContext:
    cfg: ExportConfig
    labels: list[str]
    spec: PreprocessSpec
    validation: ValidationSet
    reference: np.ndarray  # PyTorch fp32 logits on the validation images
    policy: DecisionPolicy
    source_sha256: str
    versions: dict[str, str]
    created: str
    governance: Governance
    num_heads: int
    hidden_size: int
    fusions: dict[str, int] = field(default_factory=dict)
    scratch: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    loaded: dict[str, Classifier] = field(default_factory=dict)  # variant -> its file, as validated
    golden_frames: list[np.ndarray] = field(default_factory=list)  # chosen by golden.choose_golden_frames
    golden_labels: list[str | None] = field(default_factory=list)
    golden_source: str = "phantom"  # or "validation": real images, only when asked for by number
    golden_expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    # token-merged twins (export/merged.py): the unmerged PyTorch model they are traced from
    # (kept only when merging is asked for), and the schedule once resolved
    model: Any = None
    merge_plan: MergePlan | None = None
    merge_report: MergeReport | None = None

    @classmethod
    def prepare(cls, cfg: ExportConfig) -> ExportContext:
        """Load the PyTorch reference once: its logits on the validation images, the decision
        policy fitted on them, provenance and governance."""
        weights, _ = check_run_folder(cfg.run_dir)  # one line for a damaged or hostile folder
        spec = load_run_spec(cfg.run_dir)
        model = load_model(cfg.run_dir)
        labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        if cfg.raw_input:
            check_spec(spec)  # before any variant is built
        assert cfg.output is not None
        cfg.output.mkdir(parents=True, exist_ok=True)
        validation = load_validation_set(cfg, spec, labels)
        logger.info("validating on %d images from %s", len(validation.keys), validation.source)
        reference = torch_logits(model, validation.pixels, cfg.batch_size)
        return cls(
            cfg=cfg,
            labels=labels,
            spec=spec,
            validation=validation,
            reference=reference,
            policy=export_policy(cfg, reference, validation, labels),  # one for all
            source_sha256=weights_sha256(cfg.run_dir) or sha256_file(weights[0]),
            versions=software_versions(EXPORT_SOFTWARE),
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            governance=read_governance(cfg.run_dir, cfg.model_version),
            num_heads=model.config.num_attention_heads,
            hidden_size=model.config.hidden_size,
            model=model if cfg.merging else None,
        )

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
        self.loaded[variant.name] = classifier  # the last attempt's: timed and golden-checked once built
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
