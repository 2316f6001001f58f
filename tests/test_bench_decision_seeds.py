"""The decision-over-seeds benchmark on two copies of the session's phantom run: every seed exported
at one common certified refer risk, evaluated on its test split, and the spread summarised."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import needs_export

pytestmark = [needs_export, pytest.mark.slow]


def test_two_seeds_share_one_refer_risk_and_their_spread_is_reported(tiny_run: Path, tmp_path: Path) -> None:
    from bench.decision_seeds import (
        QUANTIZED,
        evaluate_seed,
        export_at_common_risk,
        section_text,
        seed_folders,
        seed_record,
        summarise,
    )

    root = tmp_path / "scratch"
    for seed in (1, 0):
        shutil.copytree(tiny_run, root / f"seed-{seed}", ignore=shutil.ignore_patterns("onnx", "checkpoints"))
    (root / "seed-2").mkdir()  # unfinished: no metrics.json, so not a seed yet
    folders = seed_folders(root)
    assert [f.name for f in folders] == ["seed-0", "seed-1"]
    # a risk no seed's validation split can certify: every seed without a refer rule
    assert export_at_common_risk(folders[:1], [0.001], openvino=False, confidence=0.9) is None
    unreferred = seed_record(folders[0], evaluate_seed(folders[0]))
    assert unreferred["coverage"] is None and unreferred["refer_risk_bound"] is None
    assert summarise([unreferred])["coverage"] is None
    risk = export_at_common_risk(folders, [0.4, 0.3], openvino=False, confidence=0.9)
    assert risk in (0.3, 0.4)
    records = [seed_record(folder, evaluate_seed(folder)) for folder in folders]
    assert [r["seed"] for r in records] == [0, 1]
    for record in records:
        assert 0 <= record["coverage"] <= 1 and 0 <= record["sensitivity"] <= 1
        assert record["refer_risk_bound"] <= risk  # certified on validation at the common risk
        assert (
            set(record["agreement"]) == {"int8-dynamic"} and record["agreement"]["int8-dynamic"]["top1"] > 0.8
        )
    summary = summarise(records)
    # the same weights twice: no spread, and the mean is the value
    assert summary["coverage"]["sd"] == 0 and summary["coverage"]["mean"] == records[0]["coverage"]
    assert "openvino-int8" not in summary and QUANTIZED[0] in summary
    data = {
        "root": str(root),
        "openvino": False,
        "refer_risk": risk,
        "refer_confidence": 0.9,
        "refer_risks_tried": [0.4],
    }
    text = section_text({**data, "machine": "m", "seeds": records, "summary": summary})
    assert "2 seeds (0, 1)" in text and f"refer risk {risk:g} certified" in text
    assert f"Test split, {records[0]['images']} images" in text
    assert "| int8-dynamic: decision agreement with fp32 |" in text
