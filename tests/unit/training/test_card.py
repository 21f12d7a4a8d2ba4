"""The ONNX model card is built from a dict of facts by one template; its text is what train() always wrote."""

from __future__ import annotations

import json
from pathlib import Path

from octbatch.preprocess import Preprocessing
from octbatch.training.card import card_facts, card_text

REPO = Path(__file__).resolve().parents[3]
SPLIT = {
    "counts": {
        "train": {"CNV": 500, "DME": 120, "DRUSEN": 90, "NORMAL": 480},
        "val": {"CNV": 40, "DME": 12},
        "report": {"CNV": 3},
    }
}
VAL = {"n": 92, "accuracy": 0.91304, "macro_f1": 0.8765, "balanced_accuracy": 0.9}

# What the former octbatch.train._card_text returned for these inputs (f-string slices, before the template).
BEFORE_VALIDATION = (
    "octbatch oct4-default: small ResNet-like CNN (152,644 parameters) classifying one grayscale retinal OCT B-scan "
    "(centre square crop, 128x128) into CNV, DME, DRUSEN or NORMAL. Trained with octbatch.train on the Kermany "
    "OCT2017 sample (CC BY 4.0, doi:10.17632/rscbjbr9sj.2; Kermany et al., Cell 2018), patient-wise split (train "
    "CNV 500, DME 120, DRUSEN 90, NORMAL 480; val CNV 40, DME 12), never on Kermany's official test set; epoch 31 "
    "of 40 kept by validation macro F1, seed 0; outputs are temperature-scaled logits (T=1.235, fitted on the "
    "validation patients). A demonstration model, not a medical device: not for diagnosis or any clinical use."
)
WITH_VALIDATION = (
    "octbatch oct4-default: small ResNet-like CNN (1,234,567 parameters) classifying one grayscale retinal OCT "
    "B-scan (whole scan resized (stretch), 96x128) into CNV, DME, DRUSEN or NORMAL. Trained with octbatch.train on "
    "the Kermany OCT2017 sample (CC BY 4.0, doi:10.17632/rscbjbr9sj.2; Kermany et al., Cell 2018), patient-wise "
    "split (train CNV 500, DME 120, DRUSEN 90, NORMAL 480; val CNV 40, DME 12), never on Kermany's official test "
    "set; epoch 3 of 4 kept by validation macro F1, seed 7; outputs are temperature-scaled logits (T=0.900, fitted "
    "on the validation patients). Held-out patients (n=92): accuracy 0.913, macro F1 0.876. A demonstration "
    "model, not a medical device: not for diagnosis or any clinical use."
)


def test_card_text_matches_the_former_card_before_validation():
    spec = Preprocessing(input_size=(128, 128), resize="center_crop")
    facts = card_facts(152_644, spec, SPLIT, 31, 40, 0, 1.23456, None)
    assert facts["validation"] is None and facts["split_counts"] == {
        "train": SPLIT["counts"]["train"],
        "val": SPLIT["counts"]["val"],
    }
    assert card_text(facts) == BEFORE_VALIDATION


def test_card_text_matches_the_former_card_with_validation():
    spec = Preprocessing(input_size=(96, 128), resize="stretch")
    facts = card_facts(1_234_567, spec, SPLIT, 3, 4, 7, 0.9, VAL)
    assert facts["validation"] == {"n": 92, "accuracy": 0.91304, "macro_f1": 0.8765}
    assert card_text(facts) == WITH_VALIDATION


def test_the_shipped_models_card_is_rendered_from_its_metrics():
    m = json.loads((REPO / "engines" / "metrics.json").read_text())
    pre = m["preprocessing"]
    spec = Preprocessing(input_size=tuple(pre["input_size"]), resize=pre["resize"])
    s = m["settings"]
    facts = card_facts(
        m["parameters"],
        spec,
        m["split"],
        s["best_epoch"],
        s["epochs"],
        s["seed"],
        m["temperature"],
        m["evaluation"]["validation"],
    )
    assert card_text(facts) == m["card"]
