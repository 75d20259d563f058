"""A domain classifier for unlabelled text: hashed n-grams and a linear model (docs/classify.md).

Features are scikit-learn's ``HashingVectorizer``: no fitted vocabulary, so a document's features
depend on its text alone and any corpus streams through in batches. The model is a multinomial
logistic regression; its softmax gives each document a probability per domain, and the largest is
the document's confidence. A classifier is saved as a folder of plain numbers, never a pickle:

    classifier.json    the vectorizer's settings, the domains, how it was trained, its fingerprint
    columns.npy        int32: the hashed feature columns with a weight (the others are all zero)
    coef.npy           float32 (domains × columns): the weights of those columns
    intercept.npy      float32 (domains)

Loading reads arrays with ``allow_pickle=False`` and recomputes the fingerprint (sha256 of the
settings, domains and weights: everything a prediction depends on), so an edited folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import BadInput

FORMAT = "kdh-domain-classifier"
VERSION = 1
CONFIG = "classifier.json"
UNKNOWN = "unknown"  # the bucket of documents no domain claims with enough confidence
# Tokens: words, runs of punctuation, and a line break with the indentation after it, case kept:
# code, records and arithmetic differ as much in their punctuation, layout and case as prose does in
# its words (the line-break tokens cut code/prose confusions by a third on the demo world). Unigrams:
# bigrams gained 0.3 points of accuracy for half the speed (docs/classify.md).
FEATURES = {"analyzer": "word", "token_pattern": r"\w+|[^\w\s]+|\n[ \t]*", "lowercase": False, "ngram_range": [1, 1],
            "n_features": 1 << 18, "alternate_sign": False, "norm": "l2"}
_FEATURE_KEYS = {"analyzer": str, "token_pattern": str, "lowercase": bool, "ngram_range": list, "n_features": int,
                 "alternate_sign": bool, "norm": str}
REGULARISATION = 10.0  # logistic regression's C: little regularisation, the domains are far apart
MAX_DOCUMENTS = 100_000  # labelled documents read per domain: enough for a linear model, bounded memory


def vectorizer(features: dict):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(**{**features, "ngram_range": tuple(features["ngram_range"]), "dtype": np.float32})


@dataclass(frozen=True)
class Classifier:
    """A trained linear classifier over hashed features: ``coef`` is (domains × n_features)."""

    features: dict
    classes: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray
    training: dict = field(default_factory=dict, compare=False)  # how it was made; not in the fingerprint

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.features, self.classes, *_sparse(self.coef), self.intercept)

    def probabilities(self, texts: list[str], hashing=None) -> np.ndarray:
        """(documents × domains): the softmax of the linear scores."""
        X = (hashing or vectorizer(self.features)).transform(texts)
        scores = np.asarray(X @ self.coef.T) + self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def label(self, texts: list[str], threshold: float, hashing=None) -> tuple[list[str], np.ndarray]:
        """Each text's domain and confidence (its largest probability); ``unknown`` below ``threshold``."""
        probs = self.probabilities(texts, hashing)
        best, confidence = probs.argmax(axis=1), probs.max(axis=1)
        names = [self.classes[i] if c >= threshold else UNKNOWN for i, c in zip(best, confidence)]
        return names, confidence


def _sparse(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    columns = np.flatnonzero(np.any(coef != 0, axis=0)).astype(np.int32)
    return columns, np.ascontiguousarray(coef[:, columns], dtype=np.float32)


def _fingerprint(features: dict, classes, columns: np.ndarray, weights: np.ndarray, intercept: np.ndarray) -> str:
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "version": VERSION, "features": features,
                                        "classes": list(classes)}, sort_keys=True).encode())
    for array in (columns.astype("<i4"), weights.astype("<f4"), np.asarray(intercept).astype("<f4")):
        digest.update(array.tobytes())
    return digest.hexdigest()


# ---- training ----

def read_labelled(corpora: dict[str, list[Path]], max_documents: int = MAX_DOCUMENTS) -> dict[str, list[str]]:
    """Each domain's documents (the first ``max_documents`` with text), read with distiller/corpus.py;
    bad input names a domain with none."""
    from distiller import corpus
    from harness.errors import distill_errors

    out = {}
    with distill_errors():
        for domain, paths in corpora.items():
            texts = []
            for piece in corpus.pieces(list(paths)):
                texts += [d.text for d in corpus.documents(piece) if d.text and d.text.strip()]
                if len(texts) >= max_documents:
                    break
            if not texts:
                raise BadInput(f"domain {domain!r}: its labelled corpus ({', '.join(map(str, paths))}) holds no "
                               "document with text; give it documents (--labelled DOMAIN=PATH)")
            out[domain] = texts[:max_documents]
    return out


def held_out(text: str, fraction: float, seed: int) -> bool:
    """Whether a document is held out for testing: a seeded hash of its text, so the split is the
    same on every run and a document repeated in the corpus always falls on the same side."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


@dataclass(frozen=True)
class Trained:
    classifier: Classifier
    accuracy: float  # on the held-out documents
    confusion: pd.DataFrame  # rows: the true domain; columns: the predicted one; counts of held-out documents
    counts: pd.DataFrame  # per domain: train and held-out documents
    seconds: float  # fitting alone


def train(examples: dict[str, list[str]], *, holdout: float = 0.2, seed: int = 0,
          features: dict | None = None) -> Trained:
    """Fit on each domain's documents but a seeded ``holdout`` share, then measure on that share."""
    from sklearn.linear_model import LogisticRegression

    if len(examples) < 2:
        raise BadInput(f"a classifier needs at least two domains with labelled documents, got {', '.join(examples) or 'none'}")
    if not 0 < holdout < 1:
        raise BadInput(f"--holdout {holdout}: the held-out share must be in (0, 1)")
    features = dict(features or FEATURES)
    hashing = vectorizer(features)
    classes = tuple(sorted(examples))
    split = {d: [held_out(t, holdout, seed) for t in texts] for d, texts in examples.items()}
    fit_texts = [t for d in classes for t, out in zip(examples[d], split[d]) if not out]
    fit_labels = [d for d in classes for out in split[d] if not out]
    test_texts = [t for d in classes for t, out in zip(examples[d], split[d]) if out]
    test_labels = [d for d in classes for out in split[d] if out]
    counts = pd.DataFrame([{"domain": d, "train": split[d].count(False), "held_out": split[d].count(True)}
                           for d in classes])
    short = counts[(counts["train"] == 0) | (counts["held_out"] == 0)]
    if len(short):
        raise BadInput(f"domain(s) {', '.join(short['domain'])} have too few labelled documents to both train and "
                       f"test ({len(examples[short['domain'].iloc[0]])}); give more, or change --holdout")
    started = time.perf_counter()
    X = hashing.transform(fit_texts)
    # Fitted on the columns the training text uses: a column no document has keeps a zero weight
    # under the L2 penalty anyway, and leaving the other 2^18 out makes each solver step ~30× cheaper.
    used = np.unique(X.indices)
    model = LogisticRegression(C=REGULARISATION, max_iter=500).fit(X[:, used], fit_labels)
    seconds = time.perf_counter() - started
    order = [list(model.classes_).index(c) for c in classes]
    coef = np.zeros((len(classes), features["n_features"]), dtype=np.float32)
    coef[:, used] = model.coef_[order]
    classifier = Classifier(features, classes, coef, model.intercept_[order].astype(np.float32))
    predicted, _ = classifier.label(test_texts, 0.0, hashing)
    confusion = pd.crosstab(pd.Categorical(test_labels, classes), pd.Categorical(predicted, classes),
                            dropna=False).reindex(index=classes, columns=classes, fill_value=0)
    confusion.index.name, confusion.columns.name = "domain", "predicted"
    accuracy = float(np.mean(np.asarray(predicted) == np.asarray(test_labels)))
    training = {"accuracy": accuracy, "holdout": holdout, "seed": seed, "seconds": seconds,
                "documents": {d: {"train": int(r.train), "held_out": int(r.held_out)} for d, r in
                              zip(classes, counts.itertuples())},
                "confusion": {d: {p: int(confusion.loc[d, p]) for p in classes} for d in classes},
                "model": f"LogisticRegression(C={REGULARISATION}), multinomial", "scikit-learn": _sklearn_version()}
    classifier = Classifier(features, classes, classifier.coef, classifier.intercept, training)
    return Trained(classifier, accuracy, confusion, counts, seconds)


def confusion_table(confusion: pd.DataFrame) -> pd.DataFrame:
    """The confusion matrix as a flat table to print or log: one row per true domain, with its recall."""
    frame = confusion.copy()
    frame.columns = [f"→ {c}" for c in frame.columns]
    totals = confusion.sum(axis=1).replace(0, np.nan)
    frame["recall"] = np.diag(confusion.to_numpy()) / totals.to_numpy()
    return frame.reset_index()


def _sklearn_version() -> str:
    from importlib.metadata import version

    return version("scikit-learn")


# ---- the folder ----

def save(classifier: Classifier, folder: Path) -> Path:
    """Write the classifier folder (whole or not at all)."""
    from distiller.files import write_atomic_folder

    columns, weights = _sparse(classifier.coef)
    config = {"format": FORMAT, "version": VERSION, "fingerprint": classifier.fingerprint,
              "features": classifier.features, "classes": list(classifier.classes), "training": classifier.training}

    def fill(tmp: Path) -> None:
        np.save(tmp / "columns.npy", columns)
        np.save(tmp / "coef.npy", weights)
        np.save(tmp / "intercept.npy", classifier.intercept.astype(np.float32))
        (tmp / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")

    return write_atomic_folder(Path(folder), fill)


def load(folder: Path) -> Classifier:
    """A classifier folder written by ``save``; bad input names the folder and what is wrong with it."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in ("columns", "coef", "intercept")}
    except (OSError, ValueError) as err:
        raise BadInput(f"{folder}: not a kdh classifier folder ({err}); give the folder `kdh classify` wrote "
                       f"(it holds {CONFIG}, columns.npy, coef.npy and intercept.npy)") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise BadInput(f"{folder / CONFIG}: format {config.get('format')!r} version {config.get('version')!r}; "
                       f"this kdh reads {FORMAT!r} version {VERSION}")
    features, classes = config.get("features"), tuple(config.get("classes") or ())
    if not isinstance(features, dict) or set(features) != set(_FEATURE_KEYS) or not all(
            isinstance(features[k], t) for k, t in _FEATURE_KEYS.items()):
        raise BadInput(f"{folder / CONFIG}: field 'features' must hold exactly {', '.join(sorted(_FEATURE_KEYS))}")
    columns, weights, intercept = arrays["columns"], arrays["coef"], arrays["intercept"]
    if (weights.shape != (len(classes), len(columns)) or intercept.shape != (len(classes),)
            or (len(columns) and (columns.min() < 0 or columns.max() >= features["n_features"]))):
        raise BadInput(f"{folder}: the weights' shapes do not match its {len(classes)} domains and "
                       f"{features['n_features']} features; write the folder again with `kdh classify`")
    found = _fingerprint(features, classes, columns, weights, intercept)
    if found != config.get("fingerprint"):
        raise BadInput(f"{folder}: its weights do not match the fingerprint in {CONFIG} (changed since it was "
                       "written); train it again with `kdh classify`")
    coef = np.zeros((len(classes), features["n_features"]), dtype=np.float32)
    coef[:, columns] = weights
    return Classifier(features, classes, coef, intercept.astype(np.float32), config.get("training") or {})
