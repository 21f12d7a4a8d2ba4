"""octbatch.calibration: temperature scaling, ECE and the referral view, on inputs with known answers."""

import numpy as np
import pytest

from octbatch.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    referral_metrics,
    reliability_bins,
    softmax,
)

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 4))
    true_t = 2.5
    p = softmax(logits / true_t)
    y = np.array([rng.choice(4, p=row) for row in p])
    t = fit_temperature(logits, y)
    assert abs(t - true_t) < 0.1, t
    assert nll(logits, y, t) < nll(logits, y, 1.0)


def test_temperature_never_changes_the_prediction():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (500, 4))
    assert (softmax(logits / 3.0).argmax(1) == logits.argmax(1)).all()


def test_ece_of_a_hand_computed_case():
    # Two bins used: conf 0.9 (2 scans, 1 right -> |0.5-0.9| = 0.4), conf 0.6 (2 scans, 2 right -> 0.4).
    probs = np.array([[0.9, 0.1, 0, 0], [0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.6, 0.4, 0, 0]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    bins = [b for b in reliability_bins(probs, y) if b["n"]]
    assert [(b["n"], b["confidence"], b["accuracy"]) for b in bins] == [(2, 0.6, 1.0), (2, 0.9, 0.5)]


def test_confidence_one_lands_in_the_last_bin_and_perfect_calibration_is_zero():
    probs = np.array([[1.0, 0, 0, 0]] * 3)
    assert reliability_bins(probs, [0, 0, 0])[-1]["n"] == 3
    assert expected_calibration_error(probs, [0, 0, 0]) == 0.0


def test_referral_view_counts_cnv_and_dme_as_urgent():
    # true:  CNV  DME  DRUSEN NORMAL DME
    # pred:  DME  NORMAL DRUSEN CNV  DME
    r = referral_metrics([0, 1, 2, 3, 1], [1, 3, 2, 0, 1], CLASSES)
    assert r["urgent_n"] == 3 and r["non_urgent_n"] == 2
    assert r["urgent_sensitivity"] == pytest.approx(2 / 3, abs=1e-4)  # CNV->DME still urgent; DME->NORMAL missed
    assert r["urgent_specificity"] == pytest.approx(1 / 2)  # NORMAL called CNV
    assert r["referral_accuracy"] == pytest.approx(3 / 5)  # urgent/urgent, routine/routine, urgent/urgent
