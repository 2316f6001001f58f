"""Which variant to run: export measures, the manifest records, ``infer`` and ``info`` read it.

``export`` times every variant that passed validation on the export machine (batch 1, through
``Classifier`` as users run it: preprocessing of one frame + the model, ``LATENCY_RUNS`` timed
calls after warm-up, ``medvit_edge.timing.measure_latency``), records each ``latency_ms`` and
recommends the fastest. A lower-precision variant (fp16, int8) is recommended only when its
accuracy guard really ran and passed: its tolerance limits the accuracy drop, so the validation
images must have been labelled; agreement with fp32 alone is not enough to prefer it. Raw-input
twins are timed too but not recommended (they refuse extreme aspect ratios the numpy path
takes; they are for embedding, not for ``infer``).

``infer RUN_DIR`` runs the recommended file when it is there, passed, the package that runs it
is installed (an OpenVINO IR needs the ``[openvino]`` extra, which a runtime-only install lacks)
and this machine has the same ISA as the export machine (``medvit_edge.system.cpu_isa``: the
int8 and bf16 kernels, and so the ranking, depend on it); otherwise ``DEPLOY_PREFERENCE`` decides.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from medvit_edge.errors import ModelLoadError
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.manifest import Manifest, Recommendation, VariantRecord
from medvit_edge.runtime.metadata import PIXEL_VALUES_INPUT
from medvit_edge.runtime.variants import variant_named
from medvit_edge.system import cpu_isa, machine_line
from medvit_edge.timing import PREPROCESS_AND_MODEL, latency_scope, measure_latency

logger = logging.getLogger(__name__)

LATENCY_RUNS = 5
WARMUP_RUNS = 2
# The package that runs a model file, by its suffix (Classifier.load dispatches the same way).
RUNTIME_PACKAGE = {".onnx": "onnxruntime", ".xml": "openvino"}


def synthetic_frame(size: int, seed: int = 0) -> Image.Image:
    """A noise frame a little larger than the model's input (latency does not depend on pixels)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size + 32, size + 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def measure_ms(path: Path, runs: int = LATENCY_RUNS, threads: int | None = None) -> float:
    """Batch-1 median ms of ``predict_proba`` on one frame (preprocessing + model)."""
    return classifier_ms(Classifier.load(path, device="cpu", threads=threads, verify=False), runs)


def classifier_ms(classifier: Classifier, runs: int = LATENCY_RUNS) -> float:
    """``measure_ms`` of a loaded classifier."""
    frame = [synthetic_frame(classifier.spec.size)]
    return measure_latency(lambda i: classifier.predict_proba(frame), runs, WARMUP_RUNS).p50_ms


def export_latency_scope(size: int | None = None) -> str:
    """What export's ``latency_ms`` covers (``measure_ms``), for export and info to print."""
    side = f"{size + 32}x{size + 32}" if size else "(input + 32 px)"  # synthetic_frame's size
    return latency_scope(PREPROCESS_AND_MODEL, 1, f"one decoded {side} frame")


def eligible(record: VariantRecord) -> bool:
    """Passed and measured; a lower-precision or token-merged variant only when its accuracy
    guard ran (labelled validation images) and passed; raw-input twins and rows the table marks
    not deployable (explain) never (see the module's note)."""
    row = variant_named(record.variant)
    if record.status != "passed" or record.latency_ms is None or row is None:
        return False
    if row.input != PIXEL_VALUES_INPUT or not row.deployable:  # raw twins; tools such as explain
        return False
    # guarded: lower precision or token merging (fp32 twins included), judged on accuracy
    guarded = "max_accuracy_drop" in record.validation.tolerance
    return not guarded or record.validation.accuracy is not None


def recommend(
    folder: Path, records: Sequence[VariantRecord], runs: int = LATENCY_RUNS, size: int | None = None
) -> tuple[list[VariantRecord], Recommendation | None]:
    """Every passed record with its ``latency_ms``, and the recommendation (None when no
    variant is eligible)."""
    measured = []
    for record in records:
        if record.status == "passed" and record.latency_ms is None:  # export times what it loaded
            try:
                record = replace(record, latency_ms=round(measure_ms(folder / record.file, runs), 3))
            except ModelLoadError as exc:  # recorded as unmeasured; validation already loaded it
                logger.warning("could not time %s: %s", record.file, exc)
        measured.append(record)
    candidates = [record for record in measured if eligible(record)]
    if not candidates:
        return measured, None
    best = min(candidates, key=lambda record: record.latency_ms or 0.0)
    # size: the model input's, so the frame is named as export's table names it
    scope = export_latency_scope(size)
    logger.info("recommended: %s (%.1f ms per image: %s; this machine)", best.variant, best.latency_ms, scope)
    recommendation = Recommendation(
        variant=best.variant,
        file=best.file,
        latency_ms=best.latency_ms or 0.0,
        machine=machine_line(),
        isa=tuple(cpu_isa()),
        runs=runs,
    )
    return measured, recommendation


def recommended_file(folder: Path) -> Path | None:
    """The manifest's recommended file when it is usable here: present, passed, and measured on
    a machine with this machine's ISA. ``ModelLoadError`` when the manifest is unusable."""
    manifest = Manifest.read(folder)
    chosen = manifest.recommended if manifest else None
    if manifest is None or chosen is None:
        return None
    record = manifest.entry(chosen.file)
    path = folder / chosen.file
    if record is None or record.status != "passed" or not path.is_file():
        return None
    package = RUNTIME_PACKAGE.get(path.suffix.lower(), "onnxruntime")
    if importlib.util.find_spec(package) is None:
        logger.info("not using the recommended %s: %s is not installed here", chosen.file, package)
        return None
    here = tuple(cpu_isa())
    if here != chosen.isa:
        logger.info(
            "not using the recommended %s: measured on %s, this CPU has %s",
            chosen.file,
            ", ".join(chosen.isa) or "no listed ISA extensions",
            ", ".join(here) or "none of them",
        )
        return None
    return path
