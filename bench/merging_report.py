"""The token-merging benchmark's BENCHMARKS.md section and plot (bench/merging.py measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINE = "OpenVINO NNCF PTQ int8, documented"
# export's int8 accuracy guard, applied to every merged file against the unmerged fp32 model
GUARD = {"agreement": 0.98, "accuracy_drop": 0.02, "recall_drop": 0.03}
SPEED_PATCHES = 196  # the speed side's ViT-B/16 and ViT-L/16 at 224 px


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
    return "\n".join(lines + _reading_across(results))


def _reading_across(results: dict[str, Any]) -> list[str]:
    """The trained models' guard, carried to the random-init speed models by the share of tokens
    a layer keeps on average (r alone does not compare models of different depth)."""
    trained = [acc for acc in results.get("accuracy", []) if acc.get("mean_tokens")]
    if not trained or not results["models"]:
        return []
    lowest = {Path(acc["run"]).name: _lowest_passing_share(acc) for acc in trained}
    floor = max(lowest.values())
    held = ", ".join(f"on `{name}` down to {share:.0f}%" for name, share in lowest.items())
    depths = sorted({str(acc["layers"]) for acc in trained})
    lines = [
        f"Reading across by the share of tokens a layer keeps on average (r alone does not compare "
        f"the trained {'/'.join(depths)}-layer models with ViT-L's 24 layers): every file passes "
        f"the guard {held} of tokens kept. Keeping at least {floor:.0f}% (what every trained model "
        "passed), the fastest files are:",
        "",
    ]
    for size, model in results["models"].items():
        rows = model["rows"]
        kept = {k: _kept(model["mean_tokens"], SPEED_PATCHES, _r(k)) for k in rows if "|r" in k}
        best = min((k for k, share in kept.items() if share >= floor - 1e-9), key=lambda k: rows[k]["ms"])
        lines.append(
            f"- ViT-{size[0].upper()}/16: fastest is {best.replace('|', ', ')} "
            f"({kept[best]:.0f}% kept), {rows[best]['ms']:.0f} ms = "
            f"×{rows[best]['x_nncf_documented']:.2f} of the NNCF peer."
        )
    return [*lines, ""]


def _lowest_passing_share(acc: dict[str, Any]) -> float:
    """The smallest share kept such that every file at that share and above passes the guard."""
    files = acc["files"]
    rs = sorted({_r(k) for k in files if "|r" in k})
    lowest = 100.0
    for r in rs:  # r ascending: share kept descending
        if not all(files[k]["passes_guard"] for k in files if k.endswith(f"|r{r}")):
            break
        lowest = _kept(acc["mean_tokens"], acc["patches"], r)
    return lowest


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
    """Latency of each random-init ViT and agreement of each trained model, both against the
    share of tokens a layer keeps on average: r alone does not compare models of different depth
    (r 8 keeps 53% on ViT-L's 24 layers, 90% on a 6-layer model), the share does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, trained = list(results["models"]), results.get("accuracy", [])
    panels = len(sizes) + (1 if trained else 0)
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        model = results["models"][size]
        rows = model["rows"]
        for name in _runtimes(rows):
            keys = _keys_by_r(rows, name)
            xs = [_kept(model["mean_tokens"], SPEED_PATCHES, _r(k)) for k in keys]
            axis.plot(xs, [rows[k]["ms"] for k in keys], marker="o", label=name)
        axis.axhline(rows[BASELINE]["ms"], color="grey", linestyle="--", label=BASELINE)
        axis.set_title(f"ViT-{size[0].upper()}/16 (random init), batch 1, {results['threads']} threads")
        axis.set_ylabel("ms per image")
    if trained:
        axis = axes[0][-1]
        for acc in trained:
            for name in _runtimes(acc["files"]):
                keys = _keys_by_r(acc["files"], name)
                xs = [_kept(acc["mean_tokens"], acc["patches"], _r(k)) for k in keys]
                ys = [acc["files"][k]["agreement"] * 100 for k in keys]
                axis.plot(xs, ys, marker="o", label=f"{Path(acc['run']).name}: {name}")
        axis.axhline(GUARD["agreement"] * 100, color="grey", linestyle="--", label="the guard")
        axis.set_title("trained BUSI models: agreement with unmerged fp32")
        axis.set_ylabel("top-1 agreement (%)")
    for axis in axes[0]:
        axis.set_xlabel("mean tokens per layer kept (% of unmerged)")
        axis.invert_xaxis()  # more merging to the right
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _r(key: str) -> int:
    return int(key.split("|r")[1])


def _keys_by_r(rows: dict[str, Any], runtime: str) -> list[str]:
    return sorted((k for k in rows if k.startswith(runtime + "|r")), key=_r)


def _kept(mean_tokens: dict[str, float], patches: int, r: int) -> float:
    return 100 * mean_tokens[str(r)] / (patches + 1)
