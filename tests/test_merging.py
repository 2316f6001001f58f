"""Token merging (medvit_edge.train.merging) and its merged twins (export --merge-tokens): exact
where it must be, the same graph in onnxruntime and OpenVINO, validated against the unmerged
model, and run by the runtime as any other file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medvit_edge.errors import UserError
from medvit_edge.runtime.metadata import MetadataError, ModelMetadata
from medvit_edge.runtime.preprocess import PreprocessSpec

from .conftest import needs_export, needs_torch

LABELS = ["benign", "malignant", "normal"]


def _tiny_model(seed: int = 0) -> Any:
    import torch

    from medvit_edge.train.models import load_model

    torch.manual_seed(seed)
    model, _ = load_model("tiny", LABELS)
    return model.eval()


def _pixels(count: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, 64, 64)).astype(np.float32)


def _logits(model: Any, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()


# -- the schedule -------------------------------------------------------------------------------


def test_a_plan_fixes_every_token_count_and_caps_what_a_layer_cannot_merge() -> None:
    from medvit_edge.train.merging import MergePlan, MergeRequest, max_uniform_r

    plan = MergePlan.make(MergeRequest(8), patches=64, layers=4)
    assert plan.schedule == (8, 8, 8, 8) and plan.tokens == [65, 57, 49, 41, 33] and plan.tag == "tome8"
    capped = MergePlan.make(MergeRequest(32), patches=64, layers=4)
    assert capped.schedule == (32, 16, 8, 4) and capped.tokens[-1] == 5  # half the non-class tokens at most
    scheduled = MergePlan.make(MergeRequest.parse("2,4,6,8"), patches=64, layers=4)
    assert scheduled.schedule == (2, 4, 6, 8) and scheduled.r == 5 and scheduled.tag == "tome5s"
    assert scheduled.to_dict() == {"r": 5, "schedule": [2, 4, 6, 8]}
    # ViT-B/16 at 224 px: r 15 leaves 32 tokens entering layer 12, which can still merge 15
    assert max_uniform_r(64, 4) == 12 and max_uniform_r(196, 12) == 15


@pytest.mark.parametrize("text", ["-1", "eight", "4,,4", "", "1.5"])
def test_a_bad_spelling_is_one_line(text: str) -> None:
    from medvit_edge.train.merging import MergeRequest

    with pytest.raises(UserError, match="--merge-tokens"):
        MergeRequest.parse(text)


def test_a_schedule_must_name_every_layer() -> None:
    from medvit_edge.train.merging import MergePlan, MergeRequest

    with pytest.raises(UserError, match="3 values but the model has 4 encoder layers"):
        MergePlan.make(MergeRequest.parse("1,2,3"), patches=64, layers=4)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ('{"r": 8, "schedule": [8, 8]}', True),
        ('{"r": 8}', False),
        ('{"r": -1, "schedule": []}', False),
        ('{"r": true, "schedule": []}', False),
        ('{"r": 8, "schedule": [8, 1.5]}', False),
        ('{"r": 8, "schedule": [8], "extra": 1}', False),
        ("[8]", False),
        ("{r: 8}", False),
    ],
)
def test_the_metadata_reader_parses_token_merging_strictly(value: str, ok: bool) -> None:
    spec = PreprocessSpec(size=64, resize_size=64)
    props = ModelMetadata(labels=tuple(LABELS), preprocess=spec, variant="fp32-tome").to_props()
    props["token_merging"] = value
    if ok:
        assert ModelMetadata.from_props(props).token_merging == json.loads(value)
    else:
        with pytest.raises(MetadataError, match="token_merging"):
            ModelMetadata.from_props(props, source="m.onnx")


# -- PyTorch ------------------------------------------------------------------------------------


@needs_torch
def test_r0_is_the_unmerged_model_and_weights_are_untouched() -> None:
    from medvit_edge.train.merging import MergeRequest, patch_model, unpatch_model

    model = _tiny_model()
    pixels = _pixels()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    reference = _logits(model, pixels)
    encoder_class = type(model.vit.encoder)
    patch_model(model, MergeRequest(0))
    assert type(model.vit.encoder) is not encoder_class  # the merging loop really runs
    np.testing.assert_allclose(_logits(model, pixels), reference, atol=1e-5, rtol=0)
    patch_model(model, MergeRequest(8))
    assert np.abs(_logits(model, pixels) - reference).max() > 1e-4  # merging changes the result
    after = model.state_dict()
    assert list(after) == list(before)  # same keys: save_pretrained writes a plain ViT
    assert all(bool((after[key] == before[key]).all()) for key in before)
    unpatch_model(model)
    assert type(model.vit.encoder) is encoder_class
    np.testing.assert_array_equal(_logits(model, pixels), reference)


@needs_torch
@pytest.mark.parametrize("request_text", ["8", "32", "2,4,6,8", "0,12,0,3"])
def test_class_token_is_never_merged_and_sizes_sum_to_the_patches(request_text: str) -> None:
    import torch

    from medvit_edge.train.merging import MergeRequest, patch_model

    model = _tiny_model(seed=1)
    plan = patch_model(model, MergeRequest.parse(request_text), trace_source=True)
    with torch.no_grad():
        model(pixel_values=torch.from_numpy(_pixels(4, seed=2)))
    encoder = model.vit.encoder
    size, source = encoder.last_size, encoder.last_source
    assert size.shape == (4, plan.tokens[-1], 1) and source.shape == (4, plan.tokens[-1], 65)
    assert torch.all(size.sum(dim=1) == 65)  # every patch + the class token, every image
    # each token's size is the number of patches it holds; every patch is in exactly one token
    assert torch.equal(source.sum(dim=-1, keepdim=True), size)
    assert torch.equal(source.sum(dim=1), torch.ones(4, 65))
    # the class token is alone, and first (the classifier reads token 0)
    assert torch.equal(source[:, 0], torch.nn.functional.one_hot(torch.tensor(0), 65).float().expand(4, -1))
    assert torch.all(size[:, 0] == 1)


# -- ONNX ---------------------------------------------------------------------------------------


@needs_export
def test_the_onnx_graph_is_the_pytorch_merged_model(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from medvit_edge.train.merging import MergeRequest, export_merged_onnx, merging_model

    model = _tiny_model(seed=3)
    pixels = _pixels(5, seed=4)
    merged, _ = merging_model(model, MergeRequest(8))
    expected = _logits(merged, pixels)
    path = tmp_path / "merged.onnx"
    plan = export_merged_onnx(model, MergeRequest(8), path, size=64, opset=17)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    ops = [node.op_type for node in graph.graph.node]
    assert "If" not in ops and "Loop" not in ops  # straight-line: static token counts
    assert ops.count("ScatterElements") == 2 * sum(r > 0 for r in plan.schedule)  # tokens and sizes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": pixels})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    one = session.run(None, {"pixel_values": pixels[:1]})[0]  # the batch stays dynamic
    np.testing.assert_allclose(one, expected[:1], atol=1e-4, rtol=0)
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU")
        np.testing.assert_allclose(compiled(pixels)[0], expected, atol=1e-4, rtol=0)


# -- export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvit_edge.export import ExportConfig, export

    output = tmp_path_factory.mktemp("merged") / "onnx"
    export(ExportConfig(run_dir=tiny_run, output=output, int8=True, merge_tokens="4", allow_degraded=True))
    return output


@needs_export
def test_export_writes_merged_twins_validated_against_the_unmerged_model(
    merged_export: Path, tiny_run: Path
) -> None:
    import torch
    from transformers import AutoModelForImageClassification

    from medvit_edge.runtime.classifier import Classifier
    from medvit_edge.runtime.manifest import Manifest
    from medvit_edge.runtime.variants import INT8_TOLERANCE
    from medvit_edge.train.merging import MergeRequest, merging_model

    manifest = Manifest.read(merged_export)
    assert manifest is not None and manifest.token_merging is not None
    records = {record.variant: record for record in manifest.variants}
    assert records["fp32-tome"].file == "model.tome4.onnx"
    assert records["int8-dynamic-tome"].file == "model.int8.tome4.onnx"
    assert manifest.token_merging.schedule == (4, 4, 4, 4) and manifest.token_merging.tokens[-1] == 49
    pixels = np.load(merged_export / "golden" / "pixel_values.npy")
    model = AutoModelForImageClassification.from_pretrained(tiny_run, use_safetensors=True).eval()
    merged, _ = merging_model(model, MergeRequest(4))
    with torch.no_grad():
        unmerged = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
        expected = merged(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    for variant in ("fp32-tome", "int8-dynamic-tome"):
        record = records[variant]
        classifier = Classifier.load(merged_export / record.file)  # checksum verified; nothing new
        assert classifier.metadata.token_merging == {"r": 4, "schedule": [4, 4, 4, 4]}
        assert record.validation.tolerance == INT8_TOLERANCE.to_dict()
        logits = classifier.run(pixels)
        if variant == "fp32-tome":
            np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)  # the merged model's
        # judged against the unmerged model: its agreement is what the manifest says
        assert record.validation.pytorch_accuracy is not None
    fp32 = Classifier.load(merged_export / "model.onnx")
    np.testing.assert_allclose(fp32.run(pixels), unmerged, atol=1e-4, rtol=0)
    assert not fp32.metadata.token_merging


@needs_export
def test_info_check_and_benchmark_see_the_merged_twins(merged_export: Path) -> None:
    from click.testing import CliRunner

    from medvit_edge import cli
    from medvit_edge.deploy.benchmark import BenchmarkConfig, benchmark

    info = CliRunner().invoke(cli.main, ["info", str(merged_export / "model.tome4.onnx")])
    assert info.exit_code == 0, info.output
    assert "token merging  r 4, merged per layer [4, 4, 4, 4]" in " ".join(info.output.split("  ")) or (
        "token merging" in info.output and "[4, 4, 4, 4]" in info.output
    )
    check = CliRunner().invoke(cli.main, ["check", "--json", str(merged_export)])
    report = json.loads(check.stdout)
    checked = {entry["variant"] for entry in report["variants"]}
    assert {"fp32-tome", "int8-dynamic-tome"} <= checked
    rows = benchmark(BenchmarkConfig([merged_export], runs=2, rounds=1)).rows
    assert {Path(row.model).name for row in rows} >= {"model.tome4.onnx", "model.int8.tome4.onnx"}
    assert all(row.ok for row in rows)


@needs_export
def test_the_guard_refuses_a_merge_outside_its_tolerance(tiny_run: Path, tmp_path: Path) -> None:
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.export.run import ExportValidationError
    from medvit_edge.runtime.manifest import Manifest
    from medvit_edge.runtime.variants import VARIANTS, Tolerance

    # r 32 leaves 5 of 65 tokens after four layers. The toy model can keep its labels even then
    # (its logits barely depend on the patches, in some trainings), so agreement alone cannot be
    # relied on to fail here: the twin is also held to a logit tolerance any real merging exceeds.
    strict = Tolerance(max_abs_logit=1e-3, min_agreement=VARIANTS["fp32-tome"].tolerance.min_agreement)
    cfg = ExportConfig(
        run_dir=tiny_run,
        output=tmp_path / "onnx",
        merge_tokens="32",
        golden_images=0,
        tolerances={"fp32-tome": strict},
    )
    with pytest.raises(ExportValidationError, match=r"model\.tome32\.onnx"):
        export(cfg)
    manifest = Manifest.read(tmp_path / "onnx")
    assert manifest is not None
    record = next(r for r in manifest.variants if r.variant == "fp32-tome")
    assert record.status == "failed"
    assert any("Δlogit" in f or "top-1 agreement" in f for f in record.validation.failures)
    assert next(r for r in manifest.variants if r.variant == "fp32").status == "passed"


@needs_export
def test_auto_keeps_the_largest_r_before_the_first_that_fails(tiny_run: Path, tmp_path: Path) -> None:
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.export.merged import AUTO_CANDIDATES

    result = export(
        ExportConfig(run_dir=tiny_run, output=tmp_path / "onnx", merge_tokens="auto", golden_images=0)
    )
    report = result.manifest.token_merging
    assert report is not None and report.requested == "auto" and report.search
    uniform = [trial for trial in report.search if "," not in trial.requested]
    tried = [trial.r for trial in uniform]
    assert tried == list(AUTO_CANDIDATES[: len(tried)])  # ascending, none skipped
    assert all(trial.passed for trial in uniform[:-1])
    passed = [trial for trial in uniform if trial.passed]
    mixed = report.search[len(uniform) :]  # at most one: more merged in the later layers
    assert len(mixed) <= 1 and (not mixed or (passed and not uniform[-1].passed))
    if mixed:
        later = [int(value) for value in mixed[0].requested.split(",")]
        assert later[0] == passed[-1].r and max(later) <= uniform[-1].r
        assert sum(later) > sum(passed[-1].schedule)  # merges more than the last uniform pass
    chosen = mixed[0] if mixed and mixed[0].passed else (passed[-1] if passed else None)
    assert report.r == (chosen.r if chosen else None)
    assert report.schedule == (chosen.schedule if chosen else ())
    files = {record.file for record in result.manifest.variants}
    if chosen is not None:
        assert f"model.tome{report.r}{'s' if chosen in mixed else ''}.onnx" in files
        assert all(t.latency_ms > 0 and 0 <= t.top1_agreement <= 1 for t in report.search)
    else:
        assert not any(".tome" in name for name in files)


@needs_export
def test_auto_needs_labelled_images(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from medvit_edge.export import ExportConfig, export

    folder = tmp_path / "unlabelled"
    for name in ("first", "second"):  # class folders named after no label of the model
        (folder / name).mkdir(parents=True)
        for index in range(2):
            noise = np.random.default_rng(index).integers(0, 256, (80, 80, 3), dtype=np.uint8)
            Image.fromarray(noise).save(folder / name / f"{index}.png")
    with pytest.raises(UserError, match="--merge-tokens auto needs labelled validation images"):
        export(ExportConfig(run_dir=tiny_run, output=tmp_path / "onnx", data=folder, merge_tokens="auto"))


@needs_export
def test_overlays_refuse_a_merged_model(merged_export: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from medvit_edge.inference.overlays import check_same_model
    from medvit_edge.runtime.classifier import Classifier

    merged = Classifier.load(merged_export / "model.tome4.onnx")

    class Explaining:  # the explainability model's classifier: the unmerged fp32 file
        classifier = Classifier.load(merged_export / "model.onnx")
        path = merged_export / "model.onnx"

    with pytest.raises(UserError, match="token-merged"):
        check_same_model(Explaining(), merged)  # type: ignore[arg-type]
    check_same_model(Explaining(), Explaining.classifier)  # type: ignore[arg-type]


# -- training -----------------------------------------------------------------------------------


@needs_export
def test_train_with_merging_records_it_and_export_defaults_to_it(phantom_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    from medvit_edge.export.config import ExportConfig
    from medvit_edge.train import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig.from_recipe(
        "from-scratch",
        model="tiny",
        data=str(phantom_dir / "split.csv"),
        output=run,
        epochs=1,
        max_steps=2,
        merge_tokens=8,
        progress=False,
    )
    train(cfg)
    assert json.loads((run / "train_config.json").read_text())["merge_tokens"] == 8
    model = AutoModelForImageClassification.from_pretrained(run, use_safetensors=True)
    assert type(model.vit.encoder).__name__ == "ViTEncoder"  # a plain ViT was saved
    assert ExportConfig(run_dir=run).merge_tokens == "8" and ExportConfig(run_dir=run).merging
    assert not ExportConfig(run_dir=run, merge_tokens="0").merging
    assert "fp32-tome" in ExportConfig(run_dir=run, int8=True).requested_variants()


def test_merging_and_gradient_checkpointing_are_refused_together() -> None:
    from medvit_edge.train.config import TrainConfig

    with pytest.raises(UserError, match="--merge-tokens and --gradient-checkpointing"):
        TrainConfig(merge_tokens=8, gradient_checkpointing=True)
    with pytest.raises(UserError, match="merge_tokens"):
        TrainConfig(merge_tokens=-1)


def test_export_cli_refuses_a_bad_merge_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from medvit_edge import cli

    result = CliRunner().invoke(cli.main, ["export", str(tmp_path), "--merge-tokens", "eight"])
    assert result.exit_code == 2
    assert "--merge-tokens: expected a whole number, 'auto'" in result.output
    assert "Traceback" not in result.output
    low = CliRunner().invoke(cli.main, ["export", str(tmp_path), "--merge-tokens", "8", "--opset", "15"])
    assert low.exit_code == 2 and "needs opset 16" in low.output
