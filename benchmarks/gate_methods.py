"""Compare ways to tell OCT B-scans from everything else (issue 15): the numbers of engines/GATE.md.

Methods, all scored on what the classifier gets (decode_image with its preprocessing):
  a) the gate CNN (octbatch.gate_train): held-out numbers come from `octbatch train-gate --holdout`;
     this script reads them from --gate-metrics (engines/gate-metrics.json);
  b) classifier feature space: Mahalanobis distance of the shipped classifier's penultimate layer
     (global-average-pooled features, one Gaussian with a tied covariance fitted on training B-scans),
     and the energy score (-logsumexp of the logits). Fitted on B-scans only: no negative is seen,
     so every non-OCT image is "held out";
  c) cheap image statistics (12 numbers of the 64x64 gate input: intensity, row/column profile,
     gradient direction, speckle, dark corners) + logistic regression, trained like the CNN
     (training B-scans, real negatives of the other sources, synthetic negatives), one fit per
     held-out source.
For each: threshold = the 0.2% quantile of training-side validation B-scans (capped at 0.5 for
probabilities), false flags on every report-only split, catch rate per category holding sources out.

    python benchmarks/gate_methods.py ../shared/data/oct2017 ../shared/data/non-oct \
        --gate-metrics engines/gate-metrics.json --out benchmarks/reports/gate_methods.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def decode_all(items, spec, threads):
    """(uint8 images, ok mask) of items through the classifier's decode (octbatch.training.cache.decode_all)."""
    from octbatch.training.cache import decode_all as decode_paths

    imgs, ok, _ = decode_paths([it.path for it in items], spec, threads=threads)
    return imgs, ok


# ------------------------------------------------------------------------------- b) feature space
def classifier_features(model_path, imgs, spec):
    """(penultimate features, logits) of the classifier: the Gemm head's input exposed as an output."""
    import onnx
    import onnxruntime as ort

    from octbatch.preprocess import normalize_into

    m = onnx.load(model_path)
    gemm = [n for n in m.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    feat_name = gemm.input[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(feat_name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [m.graph.output[0].name, feat_name]
    x = np.empty((256, spec.channels, spec.height, spec.width), np.float32)
    F, L = [], []
    for i in range(0, len(imgs), 256):
        xb = normalize_into(x, imgs[i : i + 256], spec)
        lo, fe = sess.run(outs, {sess.get_inputs()[0].name: xb})
        F.append(fe.reshape(len(xb), -1))
        L.append(lo)
    return np.concatenate(F), np.concatenate(L)


# ------------------------------------------------------------------------------- c) statistics
def summarize(name, val, rep, rep_items, neg, neg_items, threshold, higher_is_oct=True):
    def flagged(s):
        return (s < threshold) if higher_is_oct else (s > threshold)

    by_split, by_cat = {}, {}
    for it, f in zip(rep_items, flagged(rep)):
        by_split.setdefault(it.split, []).append(f)
    for it, f in zip(neg_items, flagged(neg)):
        by_cat.setdefault(it.category, []).append(f)
    return {
        "method": name,
        "threshold": float(threshold),
        "validation_false_flag": float(flagged(val).mean()),
        "report_only_false_flag": {
            "all": float(flagged(rep).mean()),
            "flagged": int(flagged(rep).sum()),
            "n": len(rep),
            **{k: float(np.mean(v)) for k, v in by_split.items()},
        },
        "non_oct_caught": {
            "all": float(flagged(neg).mean()),
            **{k: float(np.mean(v)) for k, v in sorted(by_cat.items())},
        },
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("oct_dir")
    ap.add_argument("non_oct_dir")
    ap.add_argument("--gate-metrics", help="metrics JSON of `octbatch train-gate --holdout` (method a)")
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from octbatch import gate_train as gt
    from octbatch.gate import gate_input, stats_features
    from octbatch.gate_train import fit_logreg
    from octbatch.model import load_model_info

    t0 = time.perf_counter()
    info = load_model_info(None)
    spec = info.preprocessing
    oct_items, neg_items = gt.load_oct(a.oct_dir), gt.load_non_oct(a.non_oct_dir)
    oct_imgs, oct_ok = decode_all(oct_items, spec, a.threads)
    neg_imgs, neg_ok = decode_all(neg_items, spec, a.threads)
    rng = np.random.default_rng(a.seed)
    pool = [i for i, it in enumerate(oct_items) if it.split in gt.TRAIN_HINTS and oct_ok[i]]
    pool = list(rng.permutation(pool))
    n_val = len(pool) // 10
    val, trn = sorted(pool[:n_val]), sorted(pool[n_val:])
    rep = [i for i, it in enumerate(oct_items) if it.split not in gt.TRAIN_HINTS and oct_ok[i]]
    rep_items = [oct_items[i] for i in rep]
    results = []

    # b) classifier feature space
    F, L = classifier_features(info.path, np.concatenate([oct_imgs, neg_imgs]), spec)
    Fo, Fn, Lo, Ln = F[: len(oct_imgs)], F[len(oct_imgs) :], L[: len(oct_imgs)], L[len(oct_imgs) :]
    mu = Fo[trn].mean(0)
    cov = np.cov((Fo[trn] - mu).T) + 1e-3 * np.eye(F.shape[1])
    icov = np.linalg.inv(cov)

    def maha(X):
        d = X - mu
        return np.einsum("ij,jk,ik->i", d, icov, d)

    dv = maha(Fo[val])
    results.append(
        summarize(
            "b) classifier Mahalanobis (penultimate layer)",
            dv,
            maha(Fo[rep]),
            rep_items,
            maha(Fn),
            neg_items,
            float(np.quantile(dv, 0.998)),
            higher_is_oct=False,
        )
    )

    def energy(Lg):
        m = Lg.max(1, keepdims=True)
        return -(m[:, 0] + np.log(np.exp(Lg - m).sum(1)))

    ev = energy(Lo[val])
    results.append(
        summarize(
            "b) classifier energy score (logits)",
            ev,
            energy(Lo[rep]),
            rep_items,
            energy(Ln),
            neg_items,
            float(np.quantile(ev, 0.998)),
            higher_is_oct=False,
        )
    )

    def msp(Lg):
        return (
            np.exp(Lg - Lg.max(1, keepdims=True)) / np.exp(Lg - Lg.max(1, keepdims=True)).sum(1, keepdims=True)
        ).max(1)  # noqa: E731

    mv = msp(Lo[val])
    results.append(
        summarize(
            "b) classifier max softmax", mv, msp(Lo[rep]), rep_items, msp(Ln), neg_items, float(np.quantile(mv, 0.002))
        )
    )

    # c) statistics + logistic regression, one fit per held-out source
    gv_oct, gv_neg = gate_input(oct_imgs), gate_input(neg_imgs)
    S_oct, S_neg = stats_features(gv_oct), stats_features(gv_neg)
    oct_bases = gt.load_base([oct_items[i] for i in trn[:400]], threads=a.threads)
    synth = []
    for k in range(1400):
        img = gt.synth_negative(gt.SYNTH_KINDS[k % len(gt.SYNTH_KINDS)], rng, oct_bases)
        synth.append(gt.random_view(img, rng))
    S_syn = stats_features(np.stack(synth)[:, None].astype(np.float32) / 255.0)
    for by in ("source", "category"):
        neg_scores = np.zeros(len(neg_items))
        val_scores, rep_scores = [], []
        for g in sorted({getattr(it, by) for it in neg_items}):
            tr_neg = np.array([getattr(it, by) != g for it in neg_items])
            X = np.concatenate([S_oct[trn], S_neg[tr_neg], S_syn])
            y = np.concatenate([np.ones(len(trn)), np.zeros(tr_neg.sum() + len(S_syn))])
            w = np.where(y > 0, 0.5 / len(trn), 0.5 / (len(y) - len(trn)))
            f = fit_logreg(X, y, w)
            neg_scores[~tr_neg] = f(S_neg[~tr_neg])
            val_scores.append(f(S_oct[val]))
            rep_scores.append(f(S_oct[rep]))
        sv, sr = np.mean(val_scores, 0), np.mean(rep_scores, 0)
        r = summarize(
            f"c) image statistics + logistic regression (held-out {by})",
            sv,
            sr,
            rep_items,
            neg_scores,
            neg_items,
            min(0.5, float(np.quantile(sv, 0.002))),
        )
        r["missed"] = [f"{it.rel} ({v:.3f})" for it, v in zip(neg_items, neg_scores) if v >= r["threshold"]]
        r["non_oct_scores"] = [round(float(v), 4) for v in neg_scores]
        results.append(r)

    if a.gate_metrics:
        gm = json.load(open(a.gate_metrics))
        h = gm.get("non_oct_caught_holding_out_source", {})
        results.append(
            {
                "method": "a) gate CNN (held-out source; octbatch train-gate --holdout)",
                "threshold": gm["threshold"],
                "validation_false_flag": gm["validation_false_flag"],
                "report_only_false_flag": gm["report_only_false_flags_classifier_rule"],
                "non_oct_caught": {
                    k.split(":", 1)[-1]: (v["rate"] if isinstance(v, dict) else v)
                    for k, v in h.items()
                    if k == "all" or k.startswith("category:")
                },
            }
        )
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "non_oct_scores"}), file=sys.stderr)
    out = {"seconds": round(time.perf_counter() - t0, 1), "model": info.path, "results": results}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
