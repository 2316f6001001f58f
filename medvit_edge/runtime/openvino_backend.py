"""The runtime's OpenVINO backend: ``Classifier.load("model.openvino-int8.xml")``.

An OpenVINO IR is two files: the graph (``model.*.xml``) and its weights (the ``.bin`` of the
same name beside it). Both are hashed through one open handle each (``hash_model_file``),
checked against ``manifest.json`` (the record's ``sha256`` and its ``companions``), then read by
path (OpenVINO maps the weights) and must still be the same, unchanged files afterwards.

``OpenVinoSession`` is a small adapter with the part of onnxruntime's ``InferenceSession`` that
``Classifier`` uses (``get_inputs``, ``get_outputs``, ``run``, ``get_modelmeta``,
``get_providers``), so ``run``, ``run_raw`` and ``predict`` work unchanged. The metadata (the same
keys as an ONNX file's ``metadata_props``, medvit_edge/runtime/metadata.py) lives in the IR's runtime
info under ``medvit_edge``: ``model->get_rt_info<std::string>("medvit_edge", "labels")`` in C++.

Compiled for the CPU with:

* ``INFERENCE_NUM_THREADS`` = ``threads`` (all cores when not given);
* ``PERFORMANCE_HINT`` LATENCY (one stream: the fastest single call), or THROUGHPUT through
  ``classifier.load_classifier(..., hint="throughput")`` (several streams for many calls at once);
* ``INFERENCE_PRECISION_HINT`` f32 unless the file's ``quantization`` metadata names another:
  OpenVINO would otherwise run float layers in bf16 on CPUs with bf16 units (AMX, AVX-512 BF16),
  and the file would no longer give the results it was validated with;
* ``spin=False`` -> ``ENABLE_CPU_PINNING`` off: OpenVINO's threads are not bound to cores, so
  the OS can run other software there. OpenVINO has no busy-wait switch like onnxruntime's
  (its TBB workers spin briefly and then sleep by themselves).

An ``InferRequest`` is not thread-safe, so each thread gets its own (``threading.local``) from
the one compiled model: one ``Classifier`` may be shared by many threads, as with onnxruntime.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args

import numpy as np

from medvit_edge.errors import ModelLoadError
from medvit_edge.lazy import import_optional
from medvit_edge.runtime.integrity import check_unchanged, hash_model_file, verify_checksum
from medvit_edge.runtime.manifest import CompanionFile, manifest_entry

INSTALL_HINT = "OpenVINO is not installed; run .xml models after: pip install 'medvit-edge[openvino]'"
RT_INFO_ROOT = "medvit_edge"  # the IR's runtime info section holding our metadata
PROVIDER = "OpenVINO CPU"
Hint = Literal["latency", "throughput"]
# What the float layers are compiled in (also OpenVinoInt8Config's field); "default" is OpenVINO's
# choice: bf16 on CPUs with bf16 units, so results then differ between CPUs.
InferencePrecision = Literal["f32", "bf16", "f16", "default"]
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "u8": "tensor(uint8)", "i64": "tensor(int64)"}


def import_openvino() -> Any:
    return import_optional("openvino", hint=INSTALL_HINT, error=ModelLoadError)


def backend_installed(path: Path) -> bool:
    """False for an IR where OpenVINO is not installed (commands that run every file of a folder
    skip it with a warning; naming it alone still says how to install OpenVINO)."""
    return path.suffix.lower() != ".xml" or importlib.util.find_spec("openvino") is not None


def weights_path(xml: Path) -> Path:
    """The IR's weights: the ``.bin`` of the same name (OpenVINO's own convention)."""
    return xml.with_suffix(".bin")


@dataclass(frozen=True)
class TensorArg:
    """An input or output as onnxruntime describes it (``NodeArg``): name, type, shape."""

    name: str
    type: str
    shape: list[int | None]


class OpenVinoSession:
    """A compiled IR behind onnxruntime's session interface (the part ``Classifier`` uses)."""

    def __init__(self, compiled: Any, props: dict[str, str], companions: tuple[CompanionFile, ...]):
        self.compiled = compiled
        self.props = props
        self.companions = companions  # the weights file, with the sha256 of the bytes loaded
        self._local = threading.local()
        self._inputs = [_arg(port) for port in compiled.inputs]
        self._outputs = [_arg(port) for port in compiled.outputs]

    def get_inputs(self) -> list[TensorArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def get_modelmeta(self) -> Any:
        return SimpleNamespace(custom_metadata_map=dict(self.props), producer_name="OpenVINO", description="")

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Like ``InferenceSession.run``: the named outputs (all when None), copied out of this
        thread's request (its buffers are reused by its next call)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(feeds, share_inputs=True, share_outputs=False)
        names = output_names or [arg.name for arg in self._outputs]
        return [np.asarray(results[name]) for name in names]


def _arg(port: Any) -> TensorArg:
    element = port.get_element_type().get_type_name()
    dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    return TensorArg(port.get_any_name(), _TYPES.get(element, f"tensor({element})"), dims)


def open_session(
    path: Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    verify: bool | None = None,
    spin: bool = True,
    hint: Hint = "latency",
) -> tuple[OpenVinoSession, str]:
    """The checked, compiled IR and the sha256 of its ``.xml`` (``Classifier.load``'s contract:
    ``verify=None`` checks a manifest if present, ``True`` requires one, ``False`` skips it)."""
    ov = import_openvino()
    if device not in ("auto", "cpu"):
        raise ModelLoadError(f"{path}: OpenVINO files run on the CPU here; got --device {device}")
    weights = weights_path(path)
    sha256, identity = hash_model_file(path)
    if not weights.is_file():
        raise ModelLoadError(f"{path}: its weights file {weights.name} is missing beside it")
    weights_sha256, weights_identity = hash_model_file(weights)
    if verify is not False:
        verify_checksum(path, sha256, required=bool(verify))
        verify_companion(path, weights, weights_sha256)
    core = ov.Core()
    try:
        model = core.read_model(str(path), str(weights))
        props = read_props(model)
        compiled = core.compile_model(model, "CPU", compile_config(ov, props, threads, spin, hint))
    except RuntimeError as exc:  # OpenVINO reports unreadable or inconsistent IRs this way
        raise ModelLoadError(f"{path}: OpenVINO cannot load it: {_reason(exc)}") from exc
    check_unchanged(path, identity)
    check_unchanged(weights, weights_identity)
    companion = CompanionFile(weights.name, weights_sha256, weights_identity[2])  # size as hashed
    return OpenVinoSession(compiled, props, (companion,)), sha256


def _reason(exc: Exception) -> str:
    """OpenVINO's message without its C++ source locations ("Exception from src/...:84:" lines
    first, the reason last): one line for the user."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return " ".join(reasons or lines[-1:]) or type(exc).__name__


def verify_companion(path: Path, weights: Path, actual: str) -> None:
    """The weights must match the companion record of the ``.xml``'s manifest entry."""
    entry = manifest_entry(path)
    if entry is None:
        return  # verify_checksum already refused a missing manifest when one was required
    record = next((c for c in entry.companions if c.file == weights.name), None)
    if record is None:
        raise ModelLoadError(
            f"{weights}: manifest.json lists {path.name} without its weights file; cannot verify it"
        )
    if actual != record.sha256:
        raise ModelLoadError(
            f"{weights}: checksum mismatch with manifest.json (file is modified, truncated or "
            f"replaced): expected {record.sha256}, found {actual}. Refusing to load it."
        )


def read_props(model: Any) -> dict[str, str]:
    """Our metadata from the IR's runtime info (``{}`` when the IR has none)."""
    rt_info = model.get_rt_info()  # an RTMap: `in` and [] but no .get()
    if RT_INFO_ROOT not in rt_info or not isinstance(rt_info[RT_INFO_ROOT], dict):
        return {}
    section = rt_info[RT_INFO_ROOT]
    return {key: value.astype(str) for key, value in section.items()}


def compile_config(
    ov: Any, props: dict[str, str], threads: int | None, spin: bool, hint: Hint
) -> dict[str, Any]:
    """The CPU plugin's settings (see the module docstring)."""
    from openvino import properties
    from openvino.properties import hint as hints

    mode = hints.PerformanceMode.THROUGHPUT if hint == "throughput" else hints.PerformanceMode.LATENCY
    config: dict[str, Any] = {hints.performance_mode: mode}
    precision = inference_precision(props)
    if precision != "default":
        config[hints.inference_precision] = getattr(ov.Type, precision)
    if threads:
        config[properties.inference_num_threads] = threads
    if not spin:
        config[hints.enable_cpu_pinning] = False
    return config


def inference_precision(props: dict[str, str]) -> str:
    """``quantization.inference_precision`` of the file's metadata, else f32 (what it was
    validated in)."""
    try:
        quantization = json.loads(props.get("quantization", "{}"))
    except (json.JSONDecodeError, RecursionError):
        return "f32"  # the metadata check at load reports the bad JSON
    value = quantization.get("inference_precision") if isinstance(quantization, dict) else None
    return value if value in get_args(InferencePrecision) else "f32"


def ir_details(path: Path) -> dict[str, Any]:
    """What ``medvit-edge info`` shows of an IR beyond the metadata: inputs, outputs, the weights
    file and the OpenVINO versions it was converted with (no compilation: a quick read)."""
    ov = import_openvino()
    weights = weights_path(path)
    if not weights.is_file():
        raise ModelLoadError(f"{path}: its weights file {weights.name} is missing beside it")
    weights_sha256, _ = hash_model_file(weights)
    try:
        model = ov.Core().read_model(str(path), str(weights))
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: OpenVINO cannot load it: {_reason(exc)}") from exc
    rt_info = model.get_rt_info()
    return {
        "props": read_props(model),
        "inputs": [vars(_arg(port)) for port in model.inputs],
        "outputs": [vars(_arg(port)) for port in model.outputs],
        "weights": {"file": weights.name, "sha256": weights_sha256, "size_bytes": weights.stat().st_size},
        "openvino": {
            "runtime_version": rt_info["Runtime_version"].astype(str) if "Runtime_version" in rt_info else "",
            "installed": ov.get_version(),
        },
    }
