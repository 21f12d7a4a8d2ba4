"""The short model card stored in the exported ONNX file (``octbatch.model_card``): the facts of one
training run gathered in a dict (card_facts), rendered by one template (card_text). The long card of
the shipped model, engines/README.md, is octbatch.training.readme_card."""

from __future__ import annotations

from ..preprocess import Preprocessing

__all__ = ["CARD_TEMPLATE", "card_facts", "card_text"]

CARD_TEMPLATE = (
    "octbatch oct4-default: small ResNet-like CNN ({parameters:,} parameters) classifying one grayscale retinal "
    "OCT B-scan ({rule}, {height}x{width}) into CNV, DME, DRUSEN or NORMAL. Trained with octbatch.train "
    "on the Kermany OCT2017 sample (CC BY 4.0, doi:10.17632/rscbjbr9sj.2; Kermany et al., Cell 2018), patient-wise "
    "split ({counts}), never on Kermany's official test set; epoch {best_epoch} of {epochs} kept by validation macro F1, "
    "seed {seed}; outputs are temperature-scaled logits (T={temperature:.3f}, fitted on the validation patients)."
    "{held} A demonstration model, not a medical device: not for diagnosis or any clinical use."
)
HELD_TEMPLATE = " Held-out patients (n={n}): accuracy {accuracy:.3f}, macro F1 {macro_f1:.3f}."


def card_facts(
    n_params: int,
    spec: Preprocessing,
    split: dict,
    best_epoch: int,
    epochs: int,
    seed: int,
    temperature: float,
    validation: dict | None,
) -> dict:
    """What the card says about one run, as data: network size, preprocessing rule, split counts,
    selection, calibration, and the held-out validation figures once they are known (else None)."""
    return {
        "parameters": n_params,
        "rule": "whole scan resized (stretch)" if spec.resize == "stretch" else "centre square crop",
        "height": spec.height,
        "width": spec.width,
        "split_counts": {role: dict(split["counts"][role]) for role in ("train", "val")},
        "best_epoch": best_epoch,
        "epochs": epochs,
        "seed": seed,
        "temperature": temperature,
        "validation": ({k: validation[k] for k in ("n", "accuracy", "macro_f1")} if validation else None),
    }


def card_text(facts: dict) -> str:
    """The card sentence of card_facts(...)."""
    counts = "; ".join(
        f"{role} " + ", ".join(f"{c} {n}" for c, n in per_class.items())
        for role, per_class in facts["split_counts"].items()
    )
    held = HELD_TEMPLATE.format(**facts["validation"]) if facts["validation"] else ""
    fields = {k: v for k, v in facts.items() if k not in ("split_counts", "validation")}
    return CARD_TEMPLATE.format(counts=counts, held=held, **fields)
