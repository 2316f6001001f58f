"""Governance: what the run's model card says about the model, stamped into every exported file,
and ``onnx/README.md``, the model card of the exported folder (it stays with the files that get
deployed, where the run's own card does not).

The card is the one ``train`` writes (huggingface_hub ``ModelCardData``: ``model_name``,
``license``, ``intended_use``, ``contraindications``; a ``model_version`` there is used too). A
folder without a card still exports, with defaults that say nothing was stated.

The model version is a whole number (ONNX's ``model_version`` is an int64): ``export
--model-version N`` when given, else the card's ``model_version``, else 1. Bump it for every
model you publish; the weights themselves are identified by ``source_sha256``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvit_edge.files import atomic_writer
from medvit_edge.runtime.int8_target import TARGETS, weight_bits
from medvit_edge.runtime.manifest import Manifest, VariantRecord
from medvit_edge.runtime.metadata import RESEARCH_NOTICE
from medvit_edge.runtime.variants import DEPLOY_PREFERENCE, VARIANTS

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
NOT_STATED = "not stated (no model card beside the weights)"
DEFAULT_CONTRAINDICATIONS = "Not stated (no model card beside the weights): do not use for diagnosis."


@dataclass(frozen=True)
class Governance:
    model_name: str
    model_version: str
    intended_use: str
    contraindications: str
    license: str
    notice: str = RESEARCH_NOTICE
    card: str = ""  # the card it was read from, "" when there was none

    def metadata_fields(self) -> dict[str, str]:
        """The ``ModelMetadata`` keyword arguments (medvit_edge.runtime.metadata.GOVERNANCE_KEYS)."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "intended_use": self.intended_use,
            "contraindications": self.contraindications,
            "notice": self.notice,
            "license": self.license,
        }


def read_governance(run_dir: Path, model_version: int | None = None) -> Governance:
    """Name, version, intended use, contraindications and licence from ``RUN_DIR/README.md``."""
    path = run_dir / CARD_NAME
    data = _card_data(path) if path.is_file() else {}
    version = model_version if model_version is not None else _whole_number(data.get("model_version"))
    return Governance(
        model_name=str(data.get("model_name") or run_dir.resolve().name),
        model_version=str(version or 1),
        intended_use=str(data.get("intended_use") or NOT_STATED),
        contraindications=str(data.get("contraindications") or DEFAULT_CONTRAINDICATIONS),
        license=str(data.get("license") or "not stated"),
        card=str(path) if data else "",
    )


def _card_data(path: Path) -> dict[str, Any]:
    """The card's YAML header; an unreadable card is a warning (export goes on with defaults)."""
    import yaml
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        logger.warning("%s: unreadable model card (%s); governance metadata uses defaults", path, exc)
        return {}


def _whole_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    if value is not None:
        logger.warning("model card's model_version %r is not a whole number; using 1", value)
    return None


def write_folder_card(folder: Path, manifest: Manifest, governance: Governance) -> Path:
    """``folder/README.md``: a model card for the exported files (atomically written)."""
    from huggingface_hub import ModelCardData

    header = ModelCardData(
        model_name=governance.model_name,
        model_version=governance.model_version,
        license=governance.license,
        library_name="onnx",
        pipeline_tag="image-classification",
        tags=["vit", "onnx", "medical-imaging", "medvit-edge"],
        intended_use=governance.intended_use,
        contraindications=governance.contraindications,
    ).to_yaml()
    lines = [
        f"# {governance.model_name} v{governance.model_version}: ONNX files",
        "",
        f"> **{governance.notice}**",
        "",
        "## Intended use",
        governance.intended_use,
        "",
        "## Contraindications",
        governance.contraindications,
        "",
        f"Licence: {governance.license}.",
        "",
        *_files_section(manifest),
        *_deploy_section(manifest),
        *_check_section(manifest),
        *_provenance_section(manifest, governance),
    ]
    path = folder / CARD_NAME
    with atomic_writer(path) as handle:
        handle.write(f"---\n{header}\n---\n\n" + "\n".join(lines) + "\n")
    return path


def _files_section(manifest: Manifest) -> list[str]:
    lines = [
        "## Files",
        "",
        f"Labels (output column order): {', '.join(manifest.labels)}. Preprocessing "
        "(also in every file's `preprocess` metadata):",
        "",
        f"`{_compact(manifest.preprocess)}`",
        "",
        "| file | variant | validation | size MB | runs on | int8 | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in manifest.variants:
        row = VARIANTS.get(record.variant)
        lines.append(
            f"| `{record.file}` | {record.variant} | {record.status}: {_validation(record)} | "
            f"{record.size_bytes / 1e6:.2f} | {row.runs_on if row else ''} | {_int8(record)} | "
            f"`{record.sha256}` |"
        )
    return [*lines, ""]


def _validation(record: VariantRecord) -> str:
    check = record.validation
    text = f"{check.top1_agreement:.2%} agreement with PyTorch on {check.images} images"
    if check.accuracy is not None:
        text += f", accuracy {check.accuracy:.3f} (PyTorch {check.pytorch_accuracy:.3f})"
    return text


def _int8(record: VariantRecord) -> str:
    bits = weight_bits(record.quantization)
    if bits is None:
        return ""
    target = str(record.quantization.get("target", "?"))
    rule = TARGETS.get(target)
    described = rule.description if rule else f"{bits}-bit weights"
    return f"{record.quantization.get('mode', '')}, target {target} ({described})"


def _deploy_section(manifest: Manifest) -> list[str]:
    passed = [r.variant for r in manifest.variants if r.status == "passed"]
    chosen = next((name for name in DEPLOY_PREFERENCE if name in passed), None)
    raw = [r.file for r in manifest.variants if VARIANTS.get(r.variant) and VARIANTS[r.variant].base]
    lines = [
        "## Which file to deploy where",
        "",
        f"- `medvit-edge infer` on this folder runs `{VARIANTS[chosen].file_name}` ({chosen})"
        if chosen
        else "- No variant passed validation: name a file to run it anyway.",
        "- A CPU (x86 or ARM): the int8 file (fastest). A `portable` int8 file (7-bit weights) is "
        "right on every CPU (no saturation); an `avx512_vnni`/`arm64` one (8-bit) only on x86 with VNNI "
        "and on ARM64, and the runtime warns at load elsewhere.",
        "- An NVIDIA GPU: the fp16 file (CUDA), else fp32. fp32 is the reference everywhere.",
    ]
    if raw:
        lines.append(
            f"- Native code without image preprocessing: the raw-input files ({', '.join(raw)}) "
            "take decoded uint8 RGB pixels and preprocess in the graph."
        )
    return [*lines, ""]


def _check_section(manifest: Manifest) -> list[str]:
    lines = [
        "## Checking a new device",
        "",
        "`medvit-edge info FILE` shows what a file is (labels, input, preprocessing, quantization, "
        "provenance) and whether its checksum matches `manifest.json`.",
    ]
    if manifest.golden:
        golden = manifest.golden
        lines += [
            "",
            f"`{golden.folder}/` holds {golden.images} {_golden_kind(golden.source)} "
            "(PNG and the uint8 array), the "
            "exact preprocessed float tensor and every variant's expected probabilities "
            f"(`{golden.index}`). `medvit-edge check FOLDER_OR_FILE` re-runs them with the "
            "installed onnxruntime on this CPU or GPU: exit 0 when every variant agrees within its "
            "tolerance, 1 when one does not, 2 when the golden files are missing or damaged.",
        ]
    return [*lines, ""]


def _golden_kind(source: str) -> str:
    if source == "phantom":
        return "synthetic phantom images (no patient pixels)"
    return (
        "REAL validation images, asked for with --golden-images (they may show patient data "
        "burnt into the pixels: review them before these files leave the hospital)"
    )


def _provenance_section(manifest: Manifest, governance: Governance) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(manifest.versions.items()))
    data = manifest.validation_data
    return [
        "## Provenance",
        "",
        f"- Source weights: sha256 `{manifest.source_sha256}`",
        f"- Exported: {manifest.created} with {versions}",
        f"- Validated on: {data.get('images')} images from `{Path(str(data.get('source'))).name}`",
        f"- Governance read from: {'the run model card' if governance.card else NOT_STATED}",
    ]


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
