"""Decision support and quantized agreement over the seeds of a recipe: the spread of what the
single-model decision section reports.

Each seed's run folder (``bench.train_busi seeds`` made them) is exported with the decision
policy fitted on its own validation split (temperature, ``malignant-sensitivity=0.95``, a refer
rule certified at ``--refer-confidence``), then evaluated on BUSI's fixed test split. Per seed:
the operating point's test sensitivity and specificity, the refer rule's certified risk, test
coverage and accepted accuracy, and int8 (and OpenVINO int8) agreement with fp32, top-1 and
decision. The refer risk is the lowest of ``--refer-risk`` that every seed's validation split
certifies, so coverage is compared at one risk; when a seed certifies none of them, every seed is
exported without a refer rule and the section says so.

    python -m bench.decision_seeds [--root models/seeds/scratch-balanced] [--openvino]
        [--refer-risk 0.1 0.2 0.3 0.4] [--refer-confidence 0.9] [--render-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, save_json, update_section
from bench.decision_busi import export_with_policy
from bench.train_seeds import shown_path, spread_cell, stats

SECTION = "Decision support and int8 agreement over seeds (BUSI test split)"
OPERATING_POINT = "malignant-sensitivity=0.95"
QUANTIZED = ("int8-dynamic", "openvino-int8")


def seed_folders(root: Path) -> list[Path]:
    """The finished seeds under ``root`` (a ``metrics.json`` each), in seed order."""
    found = [p for p in root.glob("seed-*") if (p / "metrics.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def export_at_common_risk(
    folders: list[Path], risks: list[float], openvino: bool, confidence: float
) -> float | None:
    """Export every seed at the lowest listed refer risk that every seed's validation split
    certifies (a refused risk fails before any variant is built, so the search is cheap); when
    some seed certifies none, every seed without a refer rule (None)."""
    try:
        lowest = {folder: export_seed(folder, sorted(risks), openvino, confidence) for folder in folders}
    except SystemExit as refused:
        print(f"{refused}: every seed is exported without a refer rule")
        for folder in folders:
            export_seed(folder, [None], openvino, confidence)
        return None
    common = max(lowest.values())
    for folder, risk in lowest.items():
        if risk < common:
            export_seed(folder, [common], openvino, confidence)
    return common


def export_seed(folder: Path, risks: list[float | None], openvino: bool, confidence: float) -> Any:
    output = folder / "onnx-decision"
    shutil.rmtree(output, ignore_errors=True)
    return export_with_policy(folder, output, risks, openvino, confidence)


def evaluate_seed(folder: Path) -> dict[str, Any]:
    """The test split's report of every variant of the seed's decision export."""
    from medvit_edge.evaluation.evaluate import EvaluateConfig, evaluate

    report_dir = folder / "decision-test"
    shutil.rmtree(report_dir, ignore_errors=True)
    evaluate(
        EvaluateConfig(run_dir=folder, onnx_dir=folder / "onnx-decision", split="test", output=report_dir)
    )
    return json.loads((report_dir / "report.json").read_text())


def seed_record(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one seed: fp32's decision figures, each quantized variant's agreement."""
    variants = {row["variant"]: row for row in report["variants"]}
    fp32 = variants["fp32"]["decision"]
    point = next(p for p in fp32["operating_points"] if p["name"] == OPERATING_POINT)
    refer = fp32.get("refer") or {}
    record: dict[str, Any] = {
        "seed": int(folder.name.split("-")[-1]),
        "run_dir": shown_path(folder),
        "images": report["images"],
        "balanced_accuracy": variants["fp32"]["balanced_accuracy"],
        "sensitivity": point["sensitivity"]["value"],
        "specificity": point["specificity"]["value"],
        "refer_risk_bound": refer["validation"]["risk_bound"] if refer else None,
        "coverage": refer["coverage"]["value"] if refer else None,
        "accepted_accuracy": (refer.get("accepted_accuracy") or {}).get("value"),
        "agreement": {},
    }
    for name in QUANTIZED:
        if name in variants:
            row = variants[name]
            record["agreement"][name] = {
                "top1": row["top1_agreement"],
                "decision": row["decision"]["agreement"]["value"],
                "balanced_accuracy": row["balanced_accuracy"],
            }
    return record


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "refer_risk_bound",
        "coverage",
        "accepted_accuracy",
    )
    summary: dict[str, Any] = {}
    for key in keys:  # the refer figures are None for every seed when no rule was certified
        values = [r[key] for r in records if r[key] is not None]
        summary[key] = stats(values) if values else None
    for name in QUANTIZED:
        rows = [r["agreement"][name] for r in records if name in r["agreement"]]
        if rows:
            summary[name] = {k: stats([row[k] for row in rows]) for k in ("top1", "decision")}
    return summary


def _cell(s: dict[str, float] | None) -> str:
    return "–" if s is None else spread_cell(s)


def _refer_phrase(data: dict[str, Any]) -> str:
    confidence, tried = data["refer_confidence"], ", ".join(f"{r:g}" for r in data["refer_risks_tried"])
    if data["refer_risk"] is None:
        return (
            f"no refer risk of {tried} is certified at confidence {confidence:g} on every seed: no refer rule"
        )
    return f"refer risk {data['refer_risk']:g} certified at confidence {confidence:g} on every seed"


def section_text(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = [
        f"Recipe folder `{data['root']}`, {len(data['seeds'])} seeds "
        f"({', '.join(str(r['seed']) for r in data['seeds'])}); each seed's policy fitted on its own "
        f"validation split; {_refer_phrase(data)}. Test split, {data['seeds'][0]['images']} images; "
        "mean ± sd (min–max).",
        "",
        f"Command: `python -m bench.decision_seeds --root {data['root']}"
        f"{' --openvino' if data['openvino'] else ''} --refer-risk "
        f"{' '.join(f'{r:g}' for r in data['refer_risks_tried'])}`. Machine: {data['machine']}.",
        "",
        "| figure | over seeds |",
        "|---|---|",
        f"| fp32 balanced accuracy | {_cell(s['balanced_accuracy'])} |",
        f"| operating point `{OPERATING_POINT}`: test sensitivity | {_cell(s['sensitivity'])} |",
        f"| operating point: test specificity | {_cell(s['specificity'])} |",
        f"| refer rule: certified risk bound (validation) | {_cell(s['refer_risk_bound'])} |",
        f"| refer rule: test coverage (share accepted) | {_cell(s['coverage'])} |",
        f"| refer rule: accuracy on the accepted | {_cell(s['accepted_accuracy'])} |",
    ]
    for name in QUANTIZED:
        if name in s:
            lines.append(f"| {name}: top-1 agreement with fp32 | {_cell(s[name]['top1'])} |")
            lines.append(f"| {name}: decision agreement with fp32 | {_cell(s[name]['decision'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("models/seeds/scratch-balanced"))
    parser.add_argument("--refer-risk", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--refer-confidence", type=float, default=0.9)
    parser.add_argument("--openvino", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from the saved JSON")
    args = parser.parse_args()
    if args.render_only:
        update_section(SECTION, section_text(json.loads((RESULTS / "decision_busi_seeds.json").read_text())))
        return
    folders = seed_folders(args.root)
    if not folders:
        raise SystemExit(f"no finished seed under {args.root} (run `python -m bench.train_busi seeds` first)")
    risk = export_at_common_risk(folders, args.refer_risk, args.openvino, args.refer_confidence)
    records = [seed_record(folder, evaluate_seed(folder)) for folder in folders]
    data = {
        "machine": machine(),
        "root": str(args.root),
        "openvino": args.openvino,
        "refer_risk": risk,
        "refer_confidence": args.refer_confidence,
        "refer_risks_tried": args.refer_risk,
        "seeds": records,
        "summary": summarise(records),
    }
    save_json("decision_busi_seeds", data)
    update_section(SECTION, section_text(data))


if __name__ == "__main__":
    main()
