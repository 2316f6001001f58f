"""The held-out split behind a certified refer rule (medvit_edge.evaluation.policy_fit.fit_policy).

Selection with guaranteed risk (Geifman & El-Yaniv 2017) bounds the error of accepted cases on
new images only when the confidence function was fixed before the images that certify it were
seen. The temperature and the operating point shape that function (the calibrated top
probability and the decisions whose errors are counted), so a certified rule is fitted in two
parts of the validation set, split by a seeded permutation: the temperature and the operating
points on one part, the refer threshold and its Clopper-Pearson bound on the other. The seed and
both sizes are recorded in the policy's ``fitted_on``.
"""

from __future__ import annotations

import numpy as np

REFER_SPLIT_SEED = 0
# The share of validation images that certify the refer rule (the rest fit T and the points).
CERTIFY_FRACTION = 0.5


def held_out_split(count: int, seed: int = REFER_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, certify indices): disjoint, sorted, together every index below ``count``;
    each part holds at least one image when ``count`` >= 2."""
    order = np.random.default_rng(seed).permutation(count)
    certify = round(count * CERTIFY_FRACTION)
    certify = min(max(certify, 1), count - 1) if count >= 2 else count
    return np.sort(order[certify:]), np.sort(order[:certify])


def split_record(fit: np.ndarray, certify: np.ndarray, seed: int = REFER_SPLIT_SEED) -> dict[str, object]:
    """What ``fitted_on`` says about the split (numbers for the sizes and seed)."""
    return {
        "refer_split": "held out: T and operating points on fit_images, the refer rule on certify_images",
        "refer_split_seed": seed,
        "fit_images": len(fit),
        "certify_images": len(certify),
    }
