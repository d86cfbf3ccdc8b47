#!/usr/bin/env python3
"""Which score tells never-seen things from the five cell types? (issue #13, item 2)

    python benchmarks/never_seen.py --run RUN [--run-no-bccd RUN] [--shared ../shared] [--n 300]

Reads trained run folders (never writes into them) and scores, with the run's Keras model:

* in-distribution: the five types of the run's own validation split (where thresholds are fitted)
  and test split (where they are measured);
* never seen, drawn (edgecell.demo.draw_object): blank background crops, red-cell-only crops,
  non-blood patterns; each JPEG-encoded and preprocessed like a file;
* never seen, real (BCCD fields of view, ``more_cells/bccd_fields``): cell-sized windows that touch
  no annotated white cell (red cells, platelets and background only), preprocessed as ``scan``
  preprocesses a cut-out (:func:`firmware_host.preprocess.prepare`);
* with ``--run-no-bccd``: a model trained without BCCD, on BCCD's lymphocytes and eosinophils
  (types whose BCCD images it has never seen).

Candidate scores (higher = more likely not one of the five), computed from probabilities (what
the exported models output), logits or the pooled features (which they do not):

* ``not_five``: 1 - the largest calibrated probability among the five;
* ``msp``: 1 - the largest calibrated probability over all classes;
* ``entropy``: the entropy of the calibrated probabilities;
* ``energy``: -logsumexp(logits) (T = 1), ``energy_five``: the same over the five's logits;
* ``max_logit``: -the largest logit;
* ``mahalanobis``: the smallest Mahalanobis distance of the pooled features to a class mean
  (shared covariance fitted on the training split).

For each: AUROC of in-distribution test cells against each never-seen set, and the share of each
set sent to ``other`` (argmax ``other`` OR score above the threshold) with the threshold at the
score's (1 - q) quantile on validation five-type cells (q = 1 % and 2 %).
Writes benchmarks/results/never_seen.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SHARED = ROOT.parent / "shared"
RESULTS = HERE / "results"
SHARES = (0.01, 0.02)
SCORES = ("not_five", "msp", "entropy", "energy", "energy_five", "max_logit", "mahalanobis")
FROM_PROBS = {"not_five", "msp", "entropy"}


def drawn(kind: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    return drawn_cells(kind, n, size, seed)[0]


def drawn_cells(kind: str, n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` drawn images of ``kind``, preprocessed as files are, and their nucleus offsets."""
    from edgecell.demo import draw_object, encode
    from firmware_host.preprocess import decode_cell

    cells = [decode_cell(encode(draw_object(kind, np.random.default_rng([seed, i]), 128)), size) for i in range(n)]
    return np.stack([c[0] for c in cells]), np.array([c[1] for c in cells])


def field_windows(fields: Path, n: int, size: int, seed: int = 0) -> np.ndarray:
    return field_window_cells(fields, n, size, seed)[0]


def field_window_cells(fields: Path, n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cell-sized windows of BCCD fields that overlap no annotated white cell (one per field, seeded),
    preprocessed as ``scan`` does, and their nucleus offsets."""
    from firmware_host.preprocess import decode_rgb, prepare_cell, read_bytes

    rng = np.random.default_rng(seed)
    out = []
    for xml in sorted((fields / "Annotations").glob("*.xml")):
        if len(out) >= n:
            break
        root = ET.parse(xml).getroot()
        wbc = [
            [int(float(o.find("bndbox").find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")] for o in root.iter("object") if o.find("name").text == "WBC"
        ]
        jpg = fields / "JPEGImages" / (xml.stem + ".jpg")
        if not jpg.is_file():
            continue
        rgb = decode_rgb(read_bytes(jpg))
        h, w = rgb.shape[:2]
        side = int(0.3 * min(h, w))  # the expected white-cell crop at BCCD's magnification (scan's default)
        for _ in range(50):
            x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            if all(x0 + side <= a or b <= x0 or y0 + side <= c or d <= y0 for a, c, b, d in wbc):
                out.append(prepare_cell(rgb[y0 : y0 + side, x0 : x0 + side], size))
                break
    return np.stack([c[0] for c in out]), np.array([c[1] for c in out])


DAMAGE = ("cut", "smudged")
"""Damaged white cells made from real ones (:func:`damaged_cells`)."""


def damage(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A white cell made unusable: ``cut`` by the frame (the image ends a tenth of a nucleus radius past the
    cell's centre, on a random side: about half the cell is left), or ``smudged`` (a crushed cell: within 1.5
    nucleus radii of its centre, everything blurred over half a radius and washed 40 % toward the background)."""
    from PIL import Image, ImageFilter

    from firmware_host.preprocess import locate_cell

    loc = locate_cell(rgb)
    h, w = rgb.shape[:2]
    if kind == "cut":
        side = int(rng.integers(4))
        cy, cx, r = int(loc.cy), int(loc.cx), loc.radius
        keep = [slice(None), slice(None)]
        if side == 0:
            keep[1] = slice(0, min(w, int(cx + 0.1 * r)))
        elif side == 1:
            keep[1] = slice(max(0, int(cx - 0.1 * r)), w)
        elif side == 2:
            keep[0] = slice(0, min(h, int(cy + 0.1 * r)))
        else:
            keep[0] = slice(max(0, int(cy - 0.1 * r)), h)
        return np.ascontiguousarray(rgb[tuple(keep)])
    if kind == "smudged":
        blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(max(1.0, loc.radius / 2))), dtype=np.float32)
        background = np.percentile(rgb.reshape(-1, 3), 90, axis=0)
        yy, xx = np.mgrid[:h, :w]
        inside = ((yy - loc.cy) ** 2 + (xx - loc.cx) ** 2 < (1.5 * loc.radius) ** 2)[..., None]
        washed = 0.6 * blurred + 0.4 * background
        return np.clip(np.where(inside, washed, rgb) + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown damage {kind!r}; expected one of {', '.join(DAMAGE)}")


def damaged_cells(files: list[Path], kind: str, n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of ``files`` (a seeded pick), damaged (:func:`damage`) and preprocessed as ``scan`` preprocesses a
    cut-out, and their nucleus offsets."""
    from firmware_host.preprocess import decode_rgb, prepare_cell, read_bytes

    rng = np.random.default_rng([seed, DAMAGE.index(kind)])
    pick = rng.choice(len(files), size=min(n, len(files)), replace=False)
    cells = [prepare_cell(damage(decode_rgb(read_bytes(files[i])), kind, rng), size) for i in sorted(pick)]
    return np.stack([c[0] for c in cells]), np.array([c[1] for c in cells])


def folder_images(folder: Path, size: int) -> np.ndarray:
    from firmware_host.preprocess import load_image

    return np.stack([load_image(p, size) for p in sorted(folder.glob("*.jpg"))])


class Scorer:
    """Probabilities, logits and pooled features of a run's Keras model, and every candidate score."""

    def __init__(self, run: Path):
        from edgecell.model import merge_matrix, tapped
        from edgecell.runfolder import RunFolder

        self.run = RunFolder.read(run)
        self.net = tapped(self.run.load_keras(), ["gap", "logits"])  # averaged over the model's views, as it runs
        self.classes = list(self.run.classes)
        self.merge = merge_matrix(self.run.learnt_as, self.classes).astype(bool)  # the logits layer's outputs are the learnt types
        self.other = self.classes.index("other")
        self.five = [i for i, c in enumerate(self.classes) if c != "other"]
        self.t = float(self.run.temperature)

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's probabilities (its views' probabilities averaged, before the temperature), pooled features, and
        the logits of the classes: of each class, the log of the summed exp of its types' logits, both averaged over
        the views (for one view, a softmax over these logits gives the probabilities; over several it does not)."""
        from scipy.special import logsumexp

        probs, feats, logits = [], [], []
        for i in range(0, len(x), 256):
            p, f, z = self.net(x[i : i + 256].astype(np.float32), training=False)
            probs.append(np.asarray(p, np.float64))
            feats.append(np.asarray(f, np.float64))
            logits.append(np.asarray(z, np.float64))
        z = np.concatenate(logits)
        return np.concatenate(probs), np.concatenate(feats), np.stack([logsumexp(z[:, self.merge[:, c]], axis=1) for c in range(len(self.classes))], axis=1)

    def fit_features(self, x: np.ndarray, y: np.ndarray) -> None:
        _, f, _ = self.raw(x)
        self.means = np.stack([f[y == k].mean(axis=0) for k in range(len(self.classes))])
        centred = f - self.means[y]
        cov = centred.T @ centred / len(f) + 1e-6 * np.eye(f.shape[1])
        self.precision = np.linalg.inv(cov)

    def scores(self, x: np.ndarray) -> dict:
        from scipy.special import logsumexp

        from firmware_host.runtime import apply_temperature

        raw, f, z = self.raw(x)
        p = apply_temperature(raw, self.t)  # the probabilities the runtime gives (a softmax of the averaged logits is not)
        d = np.stack([np.einsum("ij,jk,ik->i", f - m, self.precision, f - m) for m in self.means], axis=1)
        return {
            "argmax_other": p.argmax(axis=1) == self.other,
            "not_five": 1 - p[:, self.five].max(axis=1),
            "msp": 1 - p.max(axis=1),
            "entropy": -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1),
            "energy": -logsumexp(z, axis=1),
            "energy_five": -logsumexp(z[:, self.five], axis=1),
            "max_logit": -z.max(axis=1),
            "mahalanobis": np.sqrt(d.min(axis=1)),
        }


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def compare(scorer: Scorer, val: dict, test: dict, unknown: dict[str, dict]) -> dict:
    out = {}
    for name in SCORES:
        row = {"from": "probabilities" if name in FROM_PROBS else ("features" if name == "mahalanobis" else "logits"), "auroc": {}, "at": {}}
        for u, s in unknown.items():
            row["auroc"][u] = auroc(test[name], s[name])
        for q in SHARES:
            thr = float(np.quantile(val[name], 1 - q))
            at = {"threshold": thr, "five_sent_to_other": float((test["argmax_other"] | (test[name] > thr)).mean())}
            at["caught"] = {u: float((s["argmax_other"] | (s[name] > thr)).mean()) for u, s in unknown.items()}
            row["at"][f"{q:.0%}"] = at
        out[name] = row
    out["argmax_only"] = {
        "five_sent_to_other": float(test["argmax_other"].mean()),
        "caught": {u: float(s["argmax_other"].mean()) for u, s in unknown.items()},
    }
    return out


def five_split(scorer: Scorer, split: str):
    from rich.console import Console

    from edgecell.evaluate import load_split, resolve

    sp = load_split(resolve(scorer.run.path), None, split, Console(stderr=True, quiet=True))
    keep = sp.y != scorer.other
    return sp, keep


def measure(run: Path, shared: Path, n: int, extra: dict[str, Path] | None = None) -> dict:
    scorer = Scorer(run)
    size = scorer.run.input_size
    tr, _ = five_split(scorer, "train")
    scorer.fit_features(tr.x, tr.y)
    va, keep_va = five_split(scorer, "val")
    te, keep_te = five_split(scorer, "test")
    val = {k: v[keep_va] for k, v in scorer.scores(va.x).items()}
    test = {k: v[keep_te] for k, v in scorer.scores(te.x).items()}
    sets = {f"drawn {k}": drawn(k, n, size) for k in ("background", "red_cells", "pattern")}
    sets["BCCD field windows (no white cell)"] = field_windows(shared / "more_cells" / "bccd_fields", n, size)
    for name, folder in (extra or {}).items():
        sets[name] = folder_images(folder, size)
    unknown = {k: scorer.scores(x) for k, x in sets.items()}
    known_other = {k: v[te.y == scorer.other] for k, v in scorer.scores(te.x).items()}
    res = compare(scorer, val, test, unknown)
    return {
        "run": str(run),
        "n_val_five": int(keep_va.sum()),
        "n_test_five": int(keep_te.sum()),
        "n_unknown": {k: len(x) for k, x in sets.items()},
        "known_other_test_argmax": float(known_other["argmax_other"].mean()) if len(known_other["argmax_other"]) else None,
        "scores": res,
    }


def markdown(r: dict) -> str:
    lines = [f"# Scores for never-seen things ({r['date']})", "", f"Command: `{r['command']}`", ""]
    for label, m in r["runs"].items():
        sets = list(m["n_unknown"])
        lines += [
            f"## {label} (`{m['run']}`)",
            "",
            f"In-distribution: the five types, validation n={m['n_val_five']} (thresholds), test n={m['n_test_five']}.",
            "",
        ]
        lines += ["Never-seen sets: " + ", ".join(f"{k} (n={v})" for k, v in m["n_unknown"].items()) + ".", ""]
        lines += ["AUROC, five-type test cells against each set:", ""]
        lines += ["| score | from | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for name in SCORES:
            s = m["scores"][name]
            lines.append(f"| {name} | {s['from']} | " + " | ".join(f"{s['auroc'][k]:.3f}" for k in sets) + " |")
        for q in SHARES:
            key = f"{q:.0%}"
            lines += ["", f"Sent to `other` (argmax other OR score above its {key} validation quantile):", ""]
            lines += ["| score | five-type test cells | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
            a = m["scores"]["argmax_only"]
            lines.append("| argmax only | " + f"{a['five_sent_to_other']:.1%} | " + " | ".join(f"{a['caught'][k]:.1%}" for k in sets) + " |")
            for name in SCORES:
                at = m["scores"][name]["at"][key]
                lines.append(f"| {name} | {at['five_sent_to_other']:.1%} | " + " | ".join(f"{at['caught'][k]:.1%}" for k in sets) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a trained run folder on all sources (read only)")
    ap.add_argument("--run-no-bccd", help="a run trained with --exclude bccd (read only): scored on BCCD lymphocytes and eosinophils")
    ap.add_argument("--shared", default=str(DEFAULT_SHARED))
    ap.add_argument("--n", type=int, default=300, help="images per drawn kind and BCCD field windows")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    from benchmarks._results import publish

    shared = Path(args.shared)
    r = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/never_seen.py " + " ".join(argv if argv is not None else sys.argv[1:]), "runs": {}}
    r["runs"]["all sources"] = measure(Path(args.run), shared, args.n)
    if args.run_no_bccd:
        extra = {f"BCCD {t} (never seen)": shared / "more_cells" / "bccd" / t for t in ("lymphocyte", "eosinophil")}
        r["runs"]["trained without BCCD"] = measure(Path(args.run_no_bccd), shared, args.n, extra)
    publish(args.results, "never_seen", r, markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
