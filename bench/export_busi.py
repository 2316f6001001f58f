"""Export benchmark: every variant of the small BUSI model (from ``bench.train_busi cpu``),
checked against PyTorch on the 156-image BUSI test split, with export wall time.

    python -m bench.export_busi [--run models/bench-small-busi]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import BUSI, machine, save_json, update_section


def run(run_dir: Path, int8: str) -> dict[str, Any]:
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.runtime.manifest import to_json_dict

    output = run_dir / f"onnx-bench-{int8}"
    started = time.perf_counter()
    result = export(
        ExportConfig(
            run_dir=run_dir,
            output=output,
            fp16=True,
            int8=True,
            int8_mode=int8,
            data=BUSI / "split.csv",
            data_split="test",
            allow_degraded=True,
        )
    )
    wall = time.perf_counter() - started
    return {
        "machine": machine(),
        "run_dir": str(run_dir),
        "int8": int8,
        "wall_s": wall,
        "variants": [to_json_dict(v) for v in result.manifest.variants],
    }


def table(data: dict[str, Any]) -> str:
    lines = [
        "| variant | status | size MB | max abs Δlogit | top-1 agreement | accuracy (PyTorch) | "
        "malignant recall (PyTorch) | export s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in data["variants"]:
        check = v["validation"]
        lines.append(
            f"| {v['variant']} | {v['status']} | {v['size_bytes'] / 1e6:.2f} | {check['max_abs_logit_diff']:.2e} | "
            f"{check['top1_agreement']:.2%} | {check['accuracy']:.3f} ({check['pytorch_accuracy']:.3f}) | "
            f"{check['recall']['malignant']:.3f} ({check['pytorch_recall']['malignant']:.3f}) | {v['export_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("models/bench-small-busi"))
    args = parser.parse_args()
    results = {mode: run(args.run, mode) for mode in ("dynamic", "static")}
    save_json("export_busi", results)
    body = (
        f"Machine: {results['dynamic']['machine']}. Command: `python -m bench.export_busi`. Model: the small "
        "ViT trained by the training benchmark. Validation: the 156-image BUSI test split, each variant against "
        "PyTorch fp32 on the same numpy-preprocessed tensors. Targets: fp32 max |Δlogit| ≤ 1e-4 and 100% "
        "agreement; fp16 ≥ 99%; int8 ≥ 98% agreement, ≤ 2 points of accuracy and ≤ 3 points of malignant "
        "recall lost.\n\n"
        f"Dynamic int8 (default), whole export {results['dynamic']['wall_s']:.0f} s:\n\n{table(results['dynamic'])}\n\n"
        f"Static int8 (minmax calibration on 64 training images), whole export "
        f"{results['static']['wall_s']:.0f} s:\n\n{table(results['static'])}"
    )
    update_section("Export: variants of the small BUSI model", body)


if __name__ == "__main__":
    main()
