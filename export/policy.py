"""The decision policy an export stamps into every variant (medvit_edge.runtime.policy).

Fitted once, on the PyTorch fp32 reference logits of the validation images (the run's validation
split unless ``--data`` names others), before any variant is built: so every variant, on every
device, turns its probabilities into decisions with the same temperature and thresholds.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from medvit_edge.errors import UserError
from medvit_edge.evaluation.policy_fit import fit_policy
from medvit_edge.runtime.policy import DecisionPolicy

from .config import ExportConfig
from .validate import ValidationSet

logger = logging.getLogger(__name__)


def export_policy(
    cfg: ExportConfig, reference: np.ndarray, validation: ValidationSet, labels: list[str]
) -> DecisionPolicy:
    """The policy for ``cfg`` (the default policy when nothing is asked or nothing can be fitted)."""
    wants_thresholds = bool(cfg.operating_points) or cfg.refer_risk is not None
    if not wants_thresholds and not cfg.calibrate:
        return DecisionPolicy()
    if validation.label_ids is None:
        if wants_thresholds:
            raise UserError(
                f"{validation.source}: --operating-point and --refer-risk are chosen on labelled "
                "validation images, and these carry no labels of the model's classes"
            )
        logger.warning(
            "%s: the validation images carry no labels: probabilities are not calibrated (temperature 1)",
            validation.source,
        )
        return DecisionPolicy()
    split = cfg.data_split or ("validation" if cfg.data is None else "given")
    policy = fit_policy(
        reference,
        validation.label_ids,
        labels,
        cfg.operating_points,
        cfg.refer_risk,
        split,
        calibrate=cfg.calibrate,
        refer_confidence=cfg.refer_confidence,
    )
    policy = dataclasses.replace(policy, fitted_on={**policy.fitted_on, "source": validation.source})
    for name, text in policy.describe():
        logger.info("decision policy: %s %s", name, text)
    return policy
