"""The token-merging benchmark's BENCHMARKS.md section and plot (bench/merging.py measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINE = "OpenVINO NNCF PTQ int8, documented"


def _runtimes(rows: dict[str, Any]) -> list[str]:
    """The runtimes measured, in the order measured (keys are ``RUNTIME|rN``)."""
    return list(dict.fromkeys(key.split("|")[0] for key in rows if "|r" in key))


def render(results: dict[str, Any]) -> str:
    lines = []
    if results["models"]:
        lines += [
            f"Machine: {results['machine']}. Batch 1, {results['threads']} threads, 224 px, random-init "
            f"ViT-B/16 and ViT-L/16, {results['rounds']} interleaved rounds x 5 calls, medians "
            "(`python -m bench.merging`). ×: latency over OpenVINO NNCF post-training int8 of the "
            "unmerged model made the documented way, same run. r = 0 is the shipped unmerged graph.",
            "",
        ]
    for size, model in results["models"].items():
        rows = model["rows"]
        rs = sorted({int(k.split("|r")[1]) for k in rows if "|r" in k})
        lines += [
            f"**ViT-{size[0].upper()}/16** (peer: {rows[BASELINE]['ms']:.0f} ms, "
            f"{rows[BASELINE]['peak_rss_mb']:.0f} MB peak RSS)",
            "",
            "| runtime | " + " | ".join(f"r {r} ({model['mean_tokens'][str(r)]:.0f} tok)" for r in rs) + " |",
            "|---|" + "---|" * len(rs),
        ]
        for name in _runtimes(rows):
            cells = []
            for r in rs:
                row = rows[f"{name}|r{r}"]
                cells.append(
                    f"{row['ms']:.0f} ms ×{row['x_nncf_documented']:.2f}, {row['peak_rss_mb']:.0f} MB"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for acc in results.get("accuracy", []):
        lines += _accuracy_lines(acc)
    return "\n".join(lines)


def _accuracy_lines(acc: dict[str, Any]) -> list[str]:
    tokens = ", ".join(f"r {r}: {n:.0f}" for r, n in acc.get("mean_tokens", {}).items())
    geometry = (
        f", {acc['patches']} patches, {acc['layers']} layers; mean tokens per layer {tokens}"
        if tokens
        else ""
    )
    lines = [
        f"Accuracy side: `{Path(acc['run']).name}` ({acc['image_size']} px{geometry}), {acc['images']} "
        f"labelled {acc['split']} images; agreement with the unmerged fp32 model.",
        "",
        "| file | agreement | accuracy | malignant recall | passes the guard |",
        "|---|---|---|---|---|",
    ]
    for key, numbers in acc["files"].items():
        lines.append(
            f"| {key.replace('|', ', ')} | {numbers['agreement']:.1%} | {numbers['accuracy']:.3f} | "
            f"{numbers['malignant_recall']:.3f} | {'yes' if numbers['passes_guard'] else 'no'} |"
        )
    return [*lines, ""]


def plot(results: dict[str, Any], path: Path) -> Path:
    """Latency against agreement with the unmerged fp32 model (``--run``), one curve per runtime
    and model size, the NNCF peer as a horizontal line; without ``--run``, latency against r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the x axis is agreement on the first trained model whose rs match the speed run's
    acc = next((a["files"] for a in results.get("accuracy", []) if a.get("image_size") == 224), None)
    sizes = list(results["models"])
    figure, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        rows = results["models"][size]["rows"]
        for name in _runtimes(rows):
            keys = sorted((k for k in rows if k.startswith(name + "|")), key=lambda k: int(k.split("|r")[1]))
            xs = [acc[k]["agreement"] * 100 if acc else int(k.split("|r")[1]) for k in keys]
            axis.plot(xs, [rows[k]["ms"] for k in keys], marker="o", label=name)
            for x, k in zip(xs, keys):
                axis.annotate(k.split("|")[1], (x, rows[k]["ms"]), fontsize=7)
        axis.axhline(rows[BASELINE]["ms"], color="grey", linestyle="--", label=BASELINE)
        axis.set_title(f"ViT-{size[0].upper()}/16, batch 1, {results['threads']} threads")
        axis.set_xlabel("top-1 agreement with unmerged fp32 (%)" if acc else "r (tokens merged per layer)")
        axis.set_ylabel("ms per image")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
