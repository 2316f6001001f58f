"""Decision support: temperature scaling, operating points, the refer rule, the policy's
strict JSON, and the policy through export, the runtime and infer on the tiny phantom model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medvit_edge import cli
from medvit_edge.errors import UserError
from medvit_edge.evaluation.metrics import calibration, negative_log_likelihood
from medvit_edge.evaluation.policy_fit import (
    choose_operating_point,
    choose_refer_rule,
    fit_policy,
    fit_temperature,
)
from medvit_edge.runtime.metadata import MetadataError, ModelMetadata
from medvit_edge.runtime.policy import (
    REFER,
    DecisionPolicy,
    OperatingPoint,
    ReferRule,
    parse_operating_point,
    softmax,
)
from medvit_edge.runtime.preprocess import PreprocessSpec

from .conftest import needs_export

LABELS = ["benign", "malignant", "normal"]


def _calibrated_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated at temperature 1 by construction."""
    logits = rng.normal(0.0, 2.0, (n, 3))
    p = softmax(logits).astype(np.float64)
    cumulative = p.cumsum(axis=1)
    labels = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    return logits, np.minimum(labels, 2)


def test_temperature_fit_recovers_a_planted_temperature(rng: np.random.Generator) -> None:
    logits, y = _calibrated_sample(rng, 6000)
    overconfident = logits * 3.0
    temperature = fit_temperature(overconfident, y)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = softmax(overconfident)
    after = DecisionPolicy(temperature).probabilities(overconfident)
    assert negative_log_likelihood(after, y) < negative_log_likelihood(before, y) - 0.1
    assert calibration(after, y)["ece"] < calibration(before, y)["ece"] / 2
    # scaling changes confidence, never the most probable label
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()
    underconfident = fit_temperature(logits / 2.0, y)
    assert underconfident == pytest.approx(0.5, rel=0.1)


def test_fit_policy_records_what_calibration_did(rng: np.random.Generator) -> None:
    logits, y = _calibrated_sample(rng, 3000)
    policy = fit_policy(logits * 3, y, LABELS, (), None, "validation")
    fitted = policy.fitted_on
    assert fitted["split"] == "validation" and fitted["images"] == 3000 and fitted["calibrated"]
    assert fitted["nll_after"] < fitted["nll_before"] and fitted["ece_after"] < fitted["ece_before"]
    assert fitted["brier_after"] < fitted["brier_before"]
    off = fit_policy(logits * 3, y, LABELS, (), None, "validation", calibrate=False)
    assert off.temperature == 1.0 and off.fitted_on["nll_after"] == off.fitted_on["nll_before"]


def test_default_policy_is_softmax_and_argmax(rng: np.random.Generator) -> None:
    logits = rng.normal(0, 3, (50, 3)).astype(np.float32)
    policy = DecisionPolicy()
    np.testing.assert_array_equal(policy.probabilities(logits), softmax(logits))
    assert policy.decide(softmax(logits), LABELS) == [LABELS[i] for i in logits.argmax(axis=1)]
    assert policy.decide(np.empty((0, 3), np.float32), LABELS) == []


def _sensitivity(p: np.ndarray, y: np.ndarray, threshold: float) -> float:
    return float((p[y == 1, 1] >= threshold).mean())


def _specificity(p: np.ndarray, y: np.ndarray, threshold: float) -> float:
    return float((p[y != 1, 1] < threshold).mean())


def test_operating_point_meets_its_goal_with_the_extreme_threshold(rng: np.random.Generator) -> None:
    logits, y = _calibrated_sample(rng, 800)
    p = softmax(logits)
    point = choose_operating_point(p, y, LABELS, "malignant-sensitivity=0.95")
    assert point.name == "malignant-sensitivity=0.95" and point.positive == "malignant"
    assert _sensitivity(p, y, point.threshold) >= 0.95
    assert point.validation["sensitivity"] == _sensitivity(p, y, point.threshold)
    assert point.validation["specificity"] == _specificity(p, y, point.threshold)
    higher = float(np.nextafter(np.float32(point.threshold), np.float32(1)))
    assert _sensitivity(p, y, higher) < 0.95  # the highest threshold that meets it
    spec = choose_operating_point(p, y, LABELS, "malignant-specificity=0.9")
    assert _specificity(p, y, spec.threshold) >= 0.9
    lower = float(np.nextafter(np.float32(spec.threshold), np.float32(0)))
    assert _specificity(p, y, lower) < 0.9  # the lowest threshold that meets it
    # applied: positive at or above the threshold, else the best of the other classes
    policy = DecisionPolicy(operating_points=(point,))
    decisions = policy.decide(p, LABELS)
    others = np.where(np.arange(3) == 1, -1.0, p).argmax(axis=1)
    expected = [LABELS[1] if row[1] >= point.threshold else LABELS[o] for row, o in zip(p, others)]
    assert decisions == expected


def test_operating_point_errors_name_the_problem(rng: np.random.Generator) -> None:
    logits, y = _calibrated_sample(rng, 100)
    p = softmax(logits)
    with pytest.raises(UserError, match="'cancer' is not a label"):
        choose_operating_point(p, y, LABELS, "cancer-sensitivity=0.9")
    with pytest.raises(UserError, match="no malignant images"):
        choose_operating_point(p, np.where(y == 1, 0, y), LABELS, "malignant-sensitivity=0.9")
    saturated = p.copy()
    saturated[y != 1] = [0.0, 1.0, 0.0]  # every negative at p(malignant) = 1
    with pytest.raises(UserError, match=r"no threshold .* reaches specificity 0\.5"):
        choose_operating_point(saturated, y, LABELS, "malignant-specificity=0.5")
    for bad in ("malignant-recall=0.9", "malignant-sensitivity=1.5", "malignant=0.9", "sensitivity"):
        with pytest.raises(UserError, match="operating point"):
            parse_operating_point(bad)
    assert parse_operating_point("a-b-specificity=0.8") == ("a-b", "specificity", 0.8)


def _accepted_risk(decisions: list[str], y: np.ndarray) -> tuple[float, float]:
    accepted = [i for i, d in enumerate(decisions) if d != REFER]
    wrong = sum(decisions[i] != LABELS[y[i]] for i in accepted)
    return len(accepted) / len(decisions), wrong / max(len(accepted), 1)


@pytest.mark.parametrize("with_point", [False, True])
def test_refer_rule_keeps_validation_risk_under_target(rng: np.random.Generator, with_point: bool) -> None:
    logits, y = _calibrated_sample(rng, 1000)
    points = ("malignant-sensitivity=0.6",) if with_point else ()
    policy = fit_policy(logits, y, LABELS, points, 0.15, "validation")
    assert policy.refer is not None
    probabilities = policy.probabilities(logits)
    coverage, risk = _accepted_risk(policy.decide(probabilities, LABELS), y)
    assert risk <= 0.15 and 0.05 < coverage < 1
    assert policy.refer.validation["risk"] == pytest.approx(risk)
    assert policy.refer.validation["coverage"] == pytest.approx(coverage)
    # the most coverage: accepting the next less confident image breaks the target
    confidence = probabilities.max(axis=1).astype(np.float64)
    below = confidence[confidence < policy.refer.threshold].max()
    looser = DecisionPolicy(policy.temperature, policy.operating_points, ReferRule(below, 0.15))
    assert _accepted_risk(looser.decide(probabilities, LABELS), y)[1] > 0.15


def test_refer_rule_that_cannot_be_met_says_the_best_risk() -> None:
    p = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], np.float32)
    y = np.array([1, 1, 2])  # the most confident case is wrong
    with pytest.raises(UserError, match=r"lowest risk among accepted cases is 0\.333"):
        choose_refer_rule(p, y, 0.1)
    rule = choose_refer_rule(p, y, 0.34)
    assert rule.validation["coverage"] == 1.0 and rule.threshold == pytest.approx(0.6)
    with pytest.raises(UserError, match="refer-risk"):
        choose_refer_rule(p, y, 1.5)


def _accepted_test_risk(probabilities: np.ndarray, y: np.ndarray, threshold: float) -> float:
    accepted = probabilities.max(axis=1) >= threshold
    return float((probabilities[accepted].argmax(axis=1) != y[accepted]).mean()) if accepted.any() else 0.0


def test_certified_refer_rule_holds_on_new_images_as_often_as_it_promises(rng: np.random.Generator) -> None:
    """100 validation sets from one distribution: the empirical rule's risk on new images exceeds
    the target about half the time (what the BUSI test split showed), the certified rule at
    confidence 0.9 at most ~10% of the time, and it still accepts images."""
    test_logits, test_y = _calibrated_sample(rng, 40000)
    test_p = softmax(test_logits)
    broken = {0.0: 0, 0.9: 0}
    coverage = []
    for _ in range(100):
        logits, y = _calibrated_sample(rng, 1500)
        p = softmax(logits)
        for confidence in broken:
            rule = choose_refer_rule(p, y, 0.1, confidence=confidence)
            broken[confidence] += _accepted_test_risk(test_p, test_y, rule.threshold) > 0.1
            if confidence:
                coverage.append(rule.validation["coverage"])
                assert rule.validation["risk"] <= rule.validation["risk_bound"] <= 0.1
    assert broken[0.0] / 100 > 0.3  # the test can tell the two rules apart
    assert broken[0.9] / 100 <= 0.15  # 0.1 promised; the slack is Monte Carlo noise (sd ~0.03)
    assert 0.1 < float(np.mean(coverage)) < 1


def test_binomial_upper_bound_is_clopper_pearson() -> None:
    from medvit_edge.evaluation.metrics import binomial_upper_bound

    beta = pytest.importorskip("scipy.stats").beta

    assert binomial_upper_bound(0, 45, 0.1) == pytest.approx(1 - 0.1 ** (1 / 45), abs=1e-9)
    for errors, trials, delta in ((0, 10, 0.05), (3, 50, 0.1), (17, 157, 0.0125), (40, 2000, 0.01)):
        expected = beta.ppf(1 - delta, errors + 1, trials - errors)
        assert binomial_upper_bound(errors, trials, delta) == pytest.approx(expected, abs=1e-7)
    assert binomial_upper_bound(5, 5, 0.1) == 1.0 and binomial_upper_bound(0, 0, 0.1) == 1.0


def test_certified_refer_rule_that_cannot_be_certified_says_what_to_change(rng: np.random.Generator) -> None:
    p = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.3, 0.6]], np.float32)
    y = np.array([0, 0, 2])  # all right, but 3 images are too few to certify anything
    # 3 thresholds -> 2 tests at 0.05 each: 0 errors in m accepted certify 0.1 only from m = 29
    with pytest.raises(UserError, match=r"needs at least 29 accepted validation images .* there are 3"):
        choose_refer_rule(p, y, 0.1, confidence=0.9)
    assert choose_refer_rule(p, y, 0.1).validation["coverage"] == 1.0  # empirically it is met
    coin = softmax(rng.normal(0, 2, (200, 3)))
    with pytest.raises(UserError, match=r"no refer threshold can be certified on these 200 .* best bound"):
        choose_refer_rule(coin, rng.integers(0, 3, 200), 0.1, confidence=0.9)  # labels unrelated
    with pytest.raises(UserError, match="refer-confidence"):
        choose_refer_rule(p, y, 0.1, confidence=1.0)
    with pytest.raises(UserError, match="risk of 0 can never be certified"):
        choose_refer_rule(p, y, 0.0, confidence=0.9)


def test_certified_rule_finds_a_size_past_a_risky_pocket_of_confident_cases(rng: np.random.Generator) -> None:
    """The most confident 100 cases are right only 80% of the time, the next 1100 always, the rest
    half the time: the error among the top k is high for small k and for large k, below the target
    only in between; the search finds that window and takes its far end."""
    n = 2000
    confidence = np.sort(rng.uniform(0.34, 1.0, n))[::-1]
    right = np.r_[rng.random(100) < 0.8, np.ones(1100, bool), rng.random(800) < 0.5]
    p = np.column_stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2])
    y = np.where(right, 0, 1)
    rule = choose_refer_rule(p, y, 0.05, confidence=0.9)
    assert rule.validation["risk"] <= rule.validation["risk_bound"] <= 0.05
    assert 0.5 < rule.validation["coverage"] < 0.65  # 1200 good ones; a few of the rest still fit


def test_policy_json_keeps_the_confidence_and_reads_older_files_as_empirical(
    rng: np.random.Generator,
) -> None:
    logits, y = _calibrated_sample(rng, 2000)
    policy = fit_policy(logits, y, LABELS, (), 0.1, refer_confidence=0.9)
    assert policy.refer is not None and policy.refer.confidence == 0.9
    again = DecisionPolicy.from_json(policy.to_json())
    assert again == policy
    assert any("with probability 0.9" in text for _, text in again.describe())
    older = json.loads(policy.to_json())
    del older["refer"]["confidence"]
    assert DecisionPolicy.from_dict(older).refer.confidence == 0.0  # type: ignore[union-attr]
    for bad in ({"confidence": 1.5}, {"confidence": 1}, {"confidence": "0.9"}):
        with pytest.raises(MetadataError, match="confidence"):
            DecisionPolicy.from_dict({**older, "refer": {**older["refer"], **bad}})
    certified = json.loads(policy.to_json())
    for bound in (None, 7.0, 0.2, -0.1):  # absent, or not a bound at or below the target 0.1
        validation = {k: v for k, v in certified["refer"]["validation"].items() if k != "risk_bound"}
        if bound is not None:
            validation["risk_bound"] = bound
        with pytest.raises(MetadataError, match="risk_bound"):
            DecisionPolicy.from_dict({**certified, "refer": {**certified["refer"], "validation": validation}})


def test_decide_refers_unsure_cases_then_applies_the_point() -> None:
    point = OperatingPoint("malignant", "sensitivity", 0.9, 0.3, {})
    policy = DecisionPolicy(1.0, (point,), ReferRule(0.6, 0.05, {}))
    p = np.array(
        [
            [0.65, 0.30, 0.05],  # p(malignant) at the threshold, top probability sure: malignant
            [0.55, 0.29, 0.16],  # top probability below 0.6: refer
            [0.30, 0.05, 0.65],  # not malignant, confident: normal
            [0.50, 0.40, 0.10],  # flagged by the point but unsure: refer (a radiologist reads it)
        ],
        np.float32,
    )
    assert policy.decide(p, LABELS) == ["malignant", REFER, "normal", REFER]
    no_refer = DecisionPolicy(1.0, (point,))
    assert no_refer.decide(p, LABELS) == ["malignant", "benign", "normal", "malignant"]
    with pytest.raises(ValueError, match="not a label"):
        policy.decide(p, ["a", "b", "c"])


def _fitted(rng: np.random.Generator) -> DecisionPolicy:
    logits, y = _calibrated_sample(rng, 600)
    return fit_policy(
        logits * 2, y, LABELS, ("malignant-sensitivity=0.9", "normal-specificity=0.8"), 0.3, "v"
    )


def test_json_round_trip(rng: np.random.Generator) -> None:
    policy = _fitted(rng)
    back = DecisionPolicy.from_json(policy.to_json(), "model.onnx")
    assert back == policy and back.to_json() == policy.to_json()
    assert DecisionPolicy.from_json(DecisionPolicy().to_json()) == DecisionPolicy()


def _mutations() -> list[tuple[str, object]]:
    return [
        ("temperature", -1.0),
        ("temperature", 0),
        ("temperature", "2"),
        ("temperature", True),
        ("temperature", math.inf),
        ("operating_points", {}),
        ("op.threshold", 1.5),
        ("op.threshold", -0.1),
        ("op.goal", "recall"),
        ("op.target", 0),
        ("op.validation", {"sensitivity": "high"}),
        ("op.extra", 1),
        ("refer.threshold", 2.0),
        ("refer", "never"),
        ("fitted_on", []),
        ("extra", 1),
        ("-temperature", None),
    ]


@pytest.mark.parametrize(("key", "value"), _mutations())
def test_json_is_strict(rng: np.random.Generator, key: str, value: object) -> None:
    data = json.loads(_fitted(rng).to_json())
    target, name = data, key
    if key.startswith("op."):
        target, name = data["operating_points"][0], key[3:]
    elif key.startswith("refer."):
        target, name = data["refer"], key[6:]
    if name.startswith("-"):
        del target[name[1:]]
    else:
        target[name] = value
    text = json.dumps(data)  # inf is written as Infinity, which json.loads accepts
    with pytest.raises(MetadataError, match=r"model\.onnx: metadata 'decision_policy'"):
        DecisionPolicy.from_json(text, "model.onnx")
    with pytest.raises(MetadataError, match="not valid JSON"):
        DecisionPolicy.from_json("{", "model.onnx")


def test_metadata_carries_and_checks_the_policy(rng: np.random.Generator) -> None:
    spec = PreprocessSpec(size=64)
    metadata = ModelMetadata(labels=tuple(LABELS), preprocess=spec, variant="fp32", policy=_fitted(rng))
    props = metadata.to_props()
    assert ModelMetadata.from_props(props, "m.onnx") == metadata
    legacy = {k: v for k, v in props.items() if k != "decision_policy"}
    assert ModelMetadata.from_props(legacy, "m.onnx").policy == DecisionPolicy()
    other = dict(props, labels=json.dumps(["benign", "cancer", "normal"]))
    with pytest.raises(MetadataError, match="'malignant', which is not a label"):
        ModelMetadata.from_props(other, "m.onnx")


# -- end to end: export -> every variant -> Classifier -> infer ---------------------------------


@pytest.fixture(scope="module")
def policy_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("policy_export") / "onnx"
    args = ["export", str(tiny_run), "--output", str(output), "--fp16", "--int8", "--allow-degraded"]
    args += ["--operating-point", "malignant-sensitivity=0.9", "--operating-point", "benign-specificity=0.5"]
    # the empirical rule: a certified one needs more validation images than the phantom run has
    # (certification is tested on its own above)
    refer = ["--refer-risk", "0.5", "--refer-confidence", "0"]
    result = CliRunner().invoke(cli.main, [*args, *refer, "--golden-images", "2"])
    assert result.exit_code == 0, result.output
    assert "operating point (applied): malignant-sensitivity=0.9" in result.output
    return output


@pytest.mark.slow
@needs_export
def test_every_variant_carries_the_same_policy(policy_export: Path) -> None:
    from medvit_edge.runtime.classifier import Classifier
    from medvit_edge.runtime.manifest import Manifest

    manifest = Manifest.read(policy_export)
    assert manifest is not None and manifest.decision_policy is not None
    policy = manifest.decision_policy
    assert [p.name for p in policy.operating_points] == [
        "malignant-sensitivity=0.9",
        "benign-specificity=0.5",
    ]
    assert policy.refer is not None and policy.refer.validation["risk"] <= 0.5
    assert policy.operating_points[0].validation["sensitivity"] >= 0.9
    assert policy.fitted_on["split"] == "validation" and policy.fitted_on["images"] > 0
    files = sorted(policy_export.glob("*.onnx"))
    assert len(files) >= 3
    for path in files:
        assert Classifier.load(path, device="cpu").policy == policy, path.name


@pytest.mark.slow
@needs_export
def test_classifier_and_infer_decide_with_the_policy(
    policy_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    from medvit_edge.runtime.classifier import Classifier

    images = sorted((phantom_dir / "test").rglob("*.png"))
    classifier = Classifier.load(policy_export / "model.int8.onnx", device="cpu")
    probabilities = classifier.predict_proba(images)
    np.testing.assert_allclose(
        probabilities, classifier.policy.probabilities(classifier.logits(images)), atol=1e-7
    )
    if classifier.policy.temperature != 1.0:  # calibrated: not the plain softmax
        assert not np.allclose(probabilities, softmax(classifier.logits(images)), atol=1e-4)
    decisions = classifier.decide(probabilities)
    assert [p.decision for p in classifier.predict(images)] == decisions
    assert classifier.predict(images[0]).decision == decisions[0]
    output = tmp_path / "preds.csv"
    result = CliRunner().invoke(
        cli.main,
        ["infer", str(policy_export / "model.int8.onnx"), str(phantom_dir / "test"), "--output", str(output)],
    )
    assert result.exit_code == 0, result.output
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert header.index("decision") == header.index("label") + 1
    by_path = {row["path"]: row for row in rows}
    assert [by_path[str(p)]["decision"] for p in images] == decisions
    for path, row in zip(images, probabilities):
        assert float(by_path[str(path)]["malignant"]) == pytest.approx(float(row[1]), abs=1e-6)
    jsonl = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(
        cli.main, ["infer", str(policy_export / "model.int8.onnx"), str(images[0]), "--output", str(jsonl)]
    )
    assert result.exit_code == 0 and json.loads(jsonl.read_text())["decision"] == decisions[0]
    info = CliRunner().invoke(cli.main, ["info", str(policy_export / "model.onnx")])
    assert info.exit_code == 0 and "malignant-sensitivity=0.9" in info.output and "temperature" in info.output


@needs_export
def test_bad_operating_point_is_one_line_exit_2(tmp_path: Path) -> None:
    for args, says in (
        (["--operating-point", "malignant-recall=0.9"], "operating point"),
        (["--operating-point", "malignant-sensitivity=abc"], "operating point"),
        (["--refer-risk", "1.5"], "--refer-risk must be"),
        (["--refer-risk", "0.1", "--refer-confidence", "1"], "--refer-confidence must be"),
        (["--refer-confidence", "0.95"], "goes with --refer-risk"),  # alone it would certify nothing
    ):
        result = CliRunner().invoke(cli.main, ["export", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
        assert says in result.output, result.output


@pytest.mark.slow
@needs_export
def test_unknown_operating_point_label_fails_before_any_file(tiny_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "onnx"
    result = CliRunner().invoke(
        cli.main,
        ["export", str(tiny_run), "--output", str(output), "--operating-point", "cancer-sensitivity=0.9"],
    )
    assert result.exit_code == 2 and "'cancer' is not a label" in result.output
    assert not list(output.glob("*.onnx"))


def test_hostile_policy_metadata_is_one_clear_error() -> None:
    """Huge integers, non-numbers where numbers are shown, points without their validation
    numbers, and a class called "refer" are refused at load, never a traceback later."""
    from medvit_edge.runtime.metadata import MetadataError, check_labels
    from medvit_edge.runtime.policy import policy_from_json

    base = json.loads(DecisionPolicy().to_json())
    point = {"positive": "malignant", "goal": "sensitivity", "target": 0.9, "threshold": 0.3}
    hostile = [
        '{"temperature": 1' + "0" * 5000 + "}",
        json.dumps({**base, "temperature": 10**400}),
        json.dumps({**base, "fitted_on": {"nll_before": "low"}}),
        json.dumps({**base, "fitted_on": {"split": ["a"]}}),
        json.dumps({**base, "operating_points": [{**point, "validation": {"images": 3}}]}),
    ]
    for text in hostile:
        with pytest.raises(MetadataError, match="decision_policy"):
            policy_from_json(text, "m.onnx")
    with pytest.raises(MetadataError, match="refer"):
        check_labels(["benign", "Refer"], "m.onnx")


def test_a_certified_refer_rule_is_certified_on_images_that_fitted_nothing(rng: np.random.Generator) -> None:
    """Selection with guaranteed risk assumes the confidence function was fixed before the
    certifying images were seen: the temperature and the operating point are fitted on one seeded
    part of the validation set, the refer rule certified on the other, and the policy says so."""
    from medvit_edge.evaluation.refer_split import held_out_split

    logits, y = _calibrated_sample(rng, 2000)
    logits = logits * 2.5  # overconfident: the fitted temperature is far from 1
    point = ["malignant-sensitivity=0.9"]
    policy = fit_policy(logits, y, LABELS, point, 0.1, refer_confidence=0.9)
    fit, certify = held_out_split(len(y))
    assert len(set(fit) & set(certify)) == 0 and len(fit) + len(certify) == len(y)
    assert policy.temperature == fit_temperature(logits[fit], y[fit])
    probabilities = DecisionPolicy(policy.temperature).probabilities(logits.astype(np.float32))
    assert policy.operating_points[0] == choose_operating_point(probabilities[fit], y[fit], LABELS, point[0])
    assert policy.refer is not None and policy.refer.validation["images"] == len(certify)
    assert policy.fitted_on["fit_images"] == len(fit) and policy.fitted_on["certify_images"] == len(certify)
    assert policy == fit_policy(logits, y, LABELS, point, 0.1, refer_confidence=0.9)  # seeded
    assert DecisionPolicy.from_json(policy.to_json()) == policy
    assert any(f"on {len(certify)} held-out images" in text for _, text in policy.describe())
    empirical = fit_policy(logits, y, LABELS, point, 0.1, refer_confidence=0)
    assert "certify_images" not in empirical.fitted_on  # an empirical rule claims nothing more
