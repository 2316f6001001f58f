"""``medvit-edge info MODEL``: what an exported file is, from the file itself.

Labels, variant, graph inputs and outputs, preprocessing, quantization (mode, target, weight
bits, and whether this CPU computes it exactly), the decision policy (temperature, operating
points, refer rule), ONNX opset, IR version and producer, sha256
and its status in ``manifest.json``, versions, provenance and the governance fields (model
name and version, intended use, contraindications, notice, licence).

Needs onnxruntime only (no torch, no ``onnx`` package): the session gives the metadata and the
graph's inputs and outputs; the opset, IR version and producer version, which onnxruntime does
not expose, come from the ModelProto's top-level fields, read straight from the protobuf wire
format while the (large) graph is skipped unread.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from medvit_edge.deploy.golden import GOLDEN_FOLDER, GOLDEN_INDEX
from medvit_edge.errors import ModelLoadError, printable
from medvit_edge.runtime.classifier import hash_model_file, import_onnxruntime
from medvit_edge.runtime.freshness import refuse_stale, run_folder_of
from medvit_edge.runtime.int8_target import TARGETS, host_kind, target_warning, weight_bits
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.metadata import GOVERNANCE_KEYS, MetadataError, ModelMetadata
from medvit_edge.runtime.openvino_backend import backend_installed
from medvit_edge.runtime.policy import DecisionPolicy
from medvit_edge.runtime.recommend import export_latency_scope

logger = logging.getLogger(__name__)

# ModelProto field numbers (onnx.proto): the small top-level fields read here.
_IR_VERSION, _PRODUCER_VERSION, _MODEL_VERSION, _DOC, _OPSET = 1, 3, 5, 6, 8


def model_info(path: Path) -> dict[str, Any]:
    """Everything ``info`` shows about one model file, as JSON-ready values."""
    sha256, _ = hash_model_file(path)  # ModelLoadError when missing or unreadable
    refuse_stale_file(path)
    if path.suffix.lower() == ".xml":
        return _ir_info(path, sha256)
    session = _session(path)
    meta = session.get_modelmeta()
    props = dict(meta.custom_metadata_map)
    info: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size, "sha256": sha256}
    info["manifest"] = _manifest_status(path, sha256)
    info["speed"] = _speed(path)
    info.update(_metadata_fields(props, path))
    info["inputs"] = [_tensor(t) for t in session.get_inputs()]
    info["outputs"] = [_tensor(t) for t in session.get_outputs()]
    header = read_header(path)
    info["onnx"] = {
        "opset": header["opset"],
        "ir_version": header["ir_version"],
        "producer": meta.producer_name,
        "producer_version": header["producer_version"],
        "model_version": header["model_version"],
        "doc_string": meta.description,
    }
    info["golden"] = _golden(path)
    return info


def _ir_info(path: Path, sha256: str) -> dict[str, Any]:
    """An OpenVINO IR: the same fields, with its weights file and OpenVINO's version in place of
    the ONNX header (medvit_edge/runtime/openvino_backend.py)."""
    from medvit_edge.runtime.openvino_backend import ir_details

    details = ir_details(path)
    weights = details["weights"]
    info: dict[str, Any] = {"file": str(path), "sha256": sha256}
    info["size_bytes"] = path.stat().st_size + weights["size_bytes"]
    info["manifest"] = _manifest_status(path, sha256, {weights["file"]: weights["sha256"]})
    info["speed"] = _speed(path)
    info.update(_metadata_fields(details["props"], path))
    info["inputs"], info["outputs"] = details["inputs"], details["outputs"]
    info["openvino"] = {**details["openvino"], "weights": weights}
    info["golden"] = _golden(path)
    return info


def folder_info(folder: Path) -> dict[str, Any]:
    """Every ONNX file and OpenVINO IR of a model folder (a run folder means its ``onnx/``)."""
    folder = folder / "onnx" if (folder / "onnx").is_dir() else folder
    files = sorted(folder.glob("*.onnx")) + sorted(folder.glob("*.xml"))
    if not files:
        raise ModelLoadError(f"{folder}: no .onnx or .xml model files here")
    runnable = [path for path in files if backend_installed(path)]
    for path in sorted(set(files) - set(runnable)):  # a runtime-only install still reads the rest
        logger.warning("%s: skipped (OpenVINO IR; pip install 'medvit-edge[openvino]' to read it)", path)
    files = runnable or files  # nothing else: say why (the install hint) rather than "no files"
    return {"folder": str(folder), "models": [model_info(path) for path in files]}


def _session(path: Path) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # load fast
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise ModelLoadError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def _tensor(arg: Any) -> dict[str, Any]:
    return {"name": arg.name, "type": arg.type, "shape": list(arg.shape)}


def _metadata_fields(props: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        metadata = ModelMetadata.from_props(props, source=str(path))
    except MetadataError as exc:
        return {"metadata_error": str(exc), "metadata_keys": sorted(props)}
    quantization = dict(metadata.quantization)
    bits = weight_bits(quantization)
    if bits is not None:
        quantization["weight_bits"] = bits
        warning = target_warning(quantization)
        fine = "no saturation, gives the validated results"
        quantization["on_this_cpu"] = f"{host_kind()}: {warning or fine}"
    return {
        "variant": metadata.variant,
        "labels": list(metadata.labels),
        "input_kind": metadata.input,
        "preprocess": metadata.preprocess.to_dict(),
        "quantization": quantization or None,
        "decision_policy": metadata.policy.to_dict(),  # temperature, operating points, refer rule
        "token_merging": metadata.token_merging or None,  # {"r": ..., "schedule": [...]}
        **{key: getattr(metadata, key) or None for key in GOVERNANCE_KEYS},
        "source_sha256": metadata.source_sha256 or None,
        "created": metadata.created or None,
        "versions": metadata.versions,
        "metadata_format": props.get("medvit_edge.format"),
    }


def _manifest_status(path: Path, sha256: str, companions: dict[str, str] | None = None) -> dict[str, Any]:
    """verified / mismatch / not listed / no manifest / unreadable, and the validation status;
    ``companions`` (file name -> sha256: an IR's weights) must match the entry's too."""
    try:
        manifest = Manifest.read(path.parent)
    except ModelLoadError as exc:
        return {"status": "unreadable", "detail": str(exc)}
    if manifest is None:
        return {"status": "no manifest"}
    entry = manifest.entry(path.name)
    if entry is None:
        return {"status": "not listed"}
    listed = {companion.file: companion.sha256 for companion in entry.companions}
    same = entry.sha256 == sha256 and all(listed.get(k) == v for k, v in (companions or {}).items())
    status = "verified" if same else "mismatch"
    return {"status": status, "validation": entry.status, "failures": list(entry.validation.failures)}


def _speed(path: Path) -> dict[str, Any] | None:
    """Export's batch-1 latency of this file and whether it is the recommended variant
    (medvit_edge/runtime/recommend.py); None for manifests written before export measured it."""
    try:
        manifest = Manifest.read(path.parent)
    except ModelLoadError:
        return None  # the manifest status says why
    entry = manifest.entry(path.name) if manifest else None
    if manifest is None or entry is None or entry.latency_ms is None:
        return None
    chosen, file_name = manifest.recommended, path.name
    recommended = chosen is not None and chosen.file == file_name
    speed: dict[str, Any] = {"latency_ms": entry.latency_ms, "recommended": recommended}
    if chosen is not None:
        speed["measured_on"] = chosen.machine
    return speed


def _golden(path: Path) -> dict[str, Any] | None:
    index = path.parent / GOLDEN_FOLDER / GOLDEN_INDEX
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        variants = [name for name, e in data["variants"].items() if e.get("file") == path.name]
        return {"index": str(index), "images": len(data["images"]), "variants": variants}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"index": str(index), "error": f"unreadable ({exc})"}


# -- the ModelProto header, without the onnx package ------------------------------------------------


def read_header(path: Path) -> dict[str, Any]:
    """IR version, producer version, model version, doc string and opsets of an ONNX file."""
    header: dict[str, Any] = {"ir_version": None, "producer_version": "", "model_version": None, "opset": {}}
    with open(path, "rb") as handle:
        for number, value in _fields(handle, skip=lambda n: n not in (_PRODUCER_VERSION, _DOC, _OPSET)):
            if number == _IR_VERSION:
                header["ir_version"] = value
            elif number == _PRODUCER_VERSION:
                header["producer_version"] = value.decode("utf-8", "replace")
            elif number == _MODEL_VERSION:
                header["model_version"] = value
            elif number == _OPSET:
                opset = dict(_fields(io.BytesIO(value)))
                domain = opset.get(1, b"").decode("utf-8", "replace") or "ai.onnx"
                header["opset"][domain] = opset.get(2)
    return header


_METADATA_PROPS = 14


def metadata_props(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (key -> value), read past the graph without loading it."""
    props: dict[str, str] = {}
    try:
        with open(path, "rb") as handle:
            for number, value in _fields(handle, skip=lambda n: n != _METADATA_PROPS):
                if number == _METADATA_PROPS and isinstance(value, bytes):
                    entry = dict(_fields(io.BytesIO(value)))
                    key, text = entry.get(1, b""), entry.get(2, b"")
                    props[key.decode("utf-8", "replace")] = text.decode("utf-8", "replace")
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model file ({exc.strerror or exc})") from exc
    return props


def _fields(handle: BinaryIO, skip: Any = lambda number: False) -> Iterator[tuple[int, Any]]:
    """(field number, value) of one protobuf message: varints as ints, length-delimited fields as
    bytes, except those ``skip`` names, which are passed over with a seek (the graph)."""
    while True:
        key = _varint(handle)
        if key is None:
            return
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, _varint(handle)
        elif wire == 2:
            length = _varint(handle) or 0
            if skip(number):
                handle.seek(length, io.SEEK_CUR)
            else:
                yield number, handle.read(length)
        elif wire in (1, 5):
            handle.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        else:
            raise ModelLoadError(f"not an ONNX model (protobuf wire type {wire})")


def _varint(handle: BinaryIO) -> int | None:
    value, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            return None if shift == 0 else value
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ModelLoadError("not an ONNX model (malformed varint)")


# -- the human table --------------------------------------------------------------------------------


def format_info(info: dict[str, Any]) -> list[str]:
    """Lines for one model (every value escaped for the terminal)."""
    rows = [(info["file"], f"{info['size_bytes'] / 1e6:.2f} MB")]
    if "metadata_error" in info:
        rows.append(("metadata", info["metadata_error"]))
    else:
        rows += _described(info)
    rows += _onnx_rows(info)
    manifest = info["manifest"]
    status = manifest["status"] + (
        f", validation {manifest['validation']}" if "validation" in manifest else ""
    )
    rows.append(("sha256", f"{info['sha256']} (manifest: {status})"))
    speed = info.get("speed")
    if speed:
        chosen = "; RECOMMENDED: the fastest validated variant there" if speed["recommended"] else ""
        where = speed.get("measured_on", "the export machine")
        scope = export_latency_scope((info.get("preprocess") or {}).get("size"))
        rows.append(("speed", f"{speed['latency_ms']:.1f} ms per image ({scope}) on {where}{chosen}"))
    golden = info.get("golden")
    if golden:
        rows.append(("golden", f"{golden.get('images', '?')} images (`medvit-edge check` on a new device)"))
    width = max(len(name) for name, _ in rows[1:]) if len(rows) > 1 else 0
    lines = [printable(f"{rows[0][0]}  ({rows[0][1]})")]
    lines += [printable(f"  {name:<{width}}  {value}") for name, value in rows[1:]]
    return lines


def _described(info: dict[str, Any]) -> list[tuple[str, str]]:
    spec = info["preprocess"]
    resize = (
        f"shortest edge -> {spec['resize_size']}, centre crop {spec['size']}"
        if spec["resize_mode"] == "shortest_edge"
        else f"squash to {spec['size']}x{spec['size']}"
    )
    rows = [
        ("model", f"{info.get('model_name') or 'not stated'} v{info.get('model_version') or '?'}"),
        ("variant", info["variant"]),
        ("labels", ", ".join(info["labels"])),
        *[("input", _tensor_text(t) + f"  [{info['input_kind']}]") for t in info["inputs"]],
        *[("output", _tensor_text(t)) for t in info["outputs"]],
        ("preprocessing", f"{resize}, {spec['interpolation']}, mean {spec['mean']}, std {spec['std']}"),
    ]
    quantization = info.get("quantization")
    if quantization:
        rule = TARGETS.get(str(quantization.get("target")))
        described = rule.description if rule else f"{quantization['weight_bits']}-bit weights"
        text = f"{quantization.get('mode')}, target {quantization.get('target')} ({described})"
        rows.append(("quantization", text))
        rows.append(("on this CPU", quantization["on_this_cpu"]))
    merging = info.get("token_merging")
    if merging:
        rows.append(("token merging", f"r {merging['r']}, merged per layer {merging['schedule']}"))
    if info.get("decision_policy") is not None:  # how probabilities become decisions
        rows += DecisionPolicy.from_dict(info["decision_policy"], info["file"]).describe()
    rows += [
        ("source sha256", info.get("source_sha256") or "?"),
        ("created", info.get("created") or "?"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(info["versions"].items()))),
    ]
    labels = {"intended_use": "intended use", "contraindications": "contraindications", "license": "licence"}
    rows += [(text, info.get(key) or "not stated") for key, text in labels.items()]
    rows.append(("notice", info.get("notice") or "not stated"))
    return rows


def _tensor_text(tensor: dict[str, Any]) -> str:
    dims = ", ".join(str(d) for d in tensor["shape"])
    return f"{tensor['name']}  {tensor['type']}  [{dims}]"


def _onnx_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    if "openvino" in info:
        openvino, weights = info["openvino"], info["openvino"]["weights"]
        made = f"IR from OpenVINO {openvino['runtime_version'] or '?'}; runs on {openvino['installed']}"
        stored = f"{weights['file']} {weights['size_bytes'] / 1e6:.2f} MB, sha256 {weights['sha256']}"
        return [("OpenVINO", made), ("weights", stored)]
    onnx = info["onnx"]
    opsets = ", ".join(f"{domain} {version}" for domain, version in onnx["opset"].items())
    producer = f"{onnx['producer']} {onnx['producer_version']}".strip()
    return [("ONNX", f"opset {opsets}; IR {onnx['ir_version']}; producer {producer}")]


def refuse_stale_file(model: Path) -> None:
    """``refuse_stale`` for a file not loaded yet: its ``source_sha256`` read from its ONNX
    metadata (the protobuf header, without onnxruntime) or, for an OpenVINO IR, its manifest."""
    if run_folder_of(model) is None:
        return  # the common deployed case: nothing read at all
    refuse_stale(model, _source_sha256(model))


def _source_sha256(model: Path) -> str:
    if model.suffix.lower() == ".onnx":
        return metadata_props(model).get("source_sha256", "")
    try:
        data = json.loads((model.parent / "manifest.json").read_text(encoding="utf-8"))
        return str(data.get("source_sha256") or "") if isinstance(data, dict) else ""
    except (OSError, ValueError):
        return ""  # the loader reports an unreadable manifest
