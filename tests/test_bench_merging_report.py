"""The token-merging section reads trained models across to the speed models by tokens kept."""

from __future__ import annotations

from bench.merging_report import BASELINE, render


def _trained(passes: dict[int, bool]) -> dict:
    """A 6-layer, 64-patch model: r 4, 8, 12 keep 85%, 69%, 55% of its tokens on average."""
    files = {
        f"{runtime}|r{r}": {"agreement": 1.0, "accuracy": 0.6, "malignant_recall": 0.6, "passes_guard": ok}
        for r, ok in passes.items()
        for runtime in ("onnxruntime fp32", "onnxruntime int8")
    }
    tokens = {"0": 65.0, "4": 55.0, "8": 45.0, "12": 36.0}
    return dict(run="models/toy", split="test", images=10, image_size=128, patches=64, layers=6,
                mean_tokens={r: tokens[r] for r in map(str, passes)}, files=files)  # fmt: skip


def _speed() -> dict:
    """ViT-L-like: r 4 keeps 77%, r 8 53% of 197 tokens; merging always faster."""
    rows = {BASELINE: {"ms": 1000.0, "peak_rss_mb": 1.0, "x_nncf_documented": 1.0}}
    for r, ms in ((0, 600.0), (4, 500.0), (8, 300.0)):
        rows[f"onnxruntime int8|r{r}"] = {"ms": ms, "peak_rss_mb": 1.0, "x_nncf_documented": ms / 1000}
    return {"rows": rows, "mean_tokens": {"0": 197.0, "4": 151.0, "8": 105.0}}


def test_the_fastest_file_is_chosen_within_the_share_every_trained_model_passed() -> None:
    results = {"machine": "m", "threads": 2, "rounds": 1, "models": {"large": _speed()}}
    results["accuracy"] = [_trained({0: True, 4: True, 8: True, 12: False})]
    text = render(results)
    assert "down to 69%" in text  # r 8 passed, r 12 (55%) failed
    assert "onnxruntime int8, r4 (77% kept), 500 ms = ×0.50" in text  # r 8 (53%) is out of reach
    results["accuracy"] = [_trained({0: True, 4: False, 8: True, 12: True})]
    assert "down to 100%" in render(results)  # a failure stops the walk: later passes do not count
    assert "onnxruntime int8, r0 (100% kept)" in render(results)
