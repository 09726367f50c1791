"""Model-based privacy metrics: an evaluation classifier judges the reconstructions.

* ``mr``, Model-based Recognition ("Privacy-preserving Image Recognition and A Strong Technical Baseline"):
  an evaluation classifier trained on clean images classifies each reconstruction; the share it classifies
  right is the leakage, read relative to the evaluator's clean accuracy. Per image: ``mr_prob`` (probability
  of the true class), ``mr_correct`` (top-1 right), ``mr_top5``; per set: ``mr_accuracy`` with a 95% Wilson
  interval, ``mr_top5_accuracy`` and ``mr_relative`` (accuracy / clean accuracy).
* ``iip``, Image Identifiability Precision (Yin et al., "See through Gradients: Image Batch Recovery via
  GradInversion", CVPR 2021; as computed by the breaching framework): a reconstruction is *identified* when
  its nearest neighbour among the candidate images is its own original. Candidates are the set's originals
  (plus an optional gallery), restricted to the reconstruction's class when labels are known. Distances:
  ``pixel`` (MSE), ``lpips`` (a registered LPIPS metric; needs its backbone weights) and ``feature``
  (Euclidean distance between the evaluator's penultimate features).
* ``feature_distance``: L2 and cosine distance between the evaluator's penultimate features of the original
  and the reconstruction.

The evaluator is a classifier checkpoint folder (:func:`semsim.victims.load_classifier`; train one with
``semsim train-evaluator``, distinct from the attacked victim). Images whose size differs from the
evaluator's ``image_size`` are resized to it (bilinear, antialiased) before classification; a one-channel
evaluator (e.g. MNIST) sees the channel mean of the (grey, three-channel) images.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from semsim.common.cache import FeatureCache
from semsim.errors import MetricUnavailable, SemsimError
from semsim.metrics.registry import EVALUATOR_METRICS, create
from semsim.models.classifiers import Classifier, load_classifier

ORIGINAL_CACHE_SIZE = 50_000  # originals whose evaluator features are kept between sets
IIP_VARIANTS = ("pixel", "lpips", "feature")


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize NCHW images in [0, 1] to ``size`` (bilinear, antialiased); unchanged when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)


def clean_accuracy(config: dict[str, Any]) -> float | None:
    """The held-out accuracy an evaluator checkpoint records (``clean_accuracy``, written by
    ``semsim train-evaluator``), or None when it records none."""
    value = config.get("clean_accuracy")
    return None if value is None else float(value)


def near_chance(config: dict[str, Any]) -> str | None:
    """Why an evaluator's recorded held-out accuracy is too close to guessing to judge anything, or None.

    Chance is 1/classes. An accuracy is "near chance" when it exceeds chance by less than half of chance, or by
    less than 3 binomial standard errors of an accuracy at chance on the held-out images (``training.n_val``).
    """
    acc, k = clean_accuracy(config), int(config.get("num_classes") or 0)
    if acc is None or k < 2:
        return None
    chance = 1.0 / k
    n_val = int((config.get("training") or {}).get("n_val") or 0)
    margin = max(0.5 * chance, 3 * math.sqrt(chance * (1 - chance) / n_val) if n_val else 0.0)
    if acc >= chance + margin:
        return None
    return (f"held-out accuracy {acc:.3f} is near chance (1/{k} = {chance:.3f}); its recognition labels and MR "
            "mean little: train it longer, on more data, or with a larger model")


class Evaluator(nn.Module):
    """An evaluation classifier with its config: classifies and embeds images of any size.

    The classifier stays in eval mode whatever ``.train()`` is called with: it is a fixed judge.
    Features of originals can be cached by key (e.g. their file path), so sets that share originals pay once.
    """

    def __init__(self, model: Classifier, config: dict[str, Any], name: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = dict(config)
        self.name = name
        self.image_size = int(config.get("image_size", 32))
        self.num_classes = int(config["num_classes"])
        self.clean_accuracy = clean_accuracy(config)
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self.in_channels = first_conv.in_channels if first_conv is not None else 3
        self._feature_cache = FeatureCache(ORIGINAL_CACHE_SIZE)

    def train(self, mode: bool = True) -> Evaluator:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Bring [0, 1] RGB images to the evaluator's input: its size and channel count."""
        x = resize_to(x, (self.image_size, self.image_size))
        if self.in_channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        return x

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, feature_dim)."""
        return self.model.features(self.prepare(x))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores, shape (N, num_classes)."""
        return self.model.head(self.model.features(self.prepare(x)))

    def original_features(self, x: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """Features of originals, reusing those already computed for the same image content (``keys``, the
        originals' paths, are accepted for the metric interface; the cache goes by content)."""
        return self._feature_cache.features(x, self.features).to(x.device)


def load_evaluator(evaluator: str | os.PathLike | Evaluator, device: str | torch.device = "cpu") -> Evaluator:
    """An :class:`Evaluator` from a checkpoint folder, named after the folder (as in ``model:<name>``)."""
    if isinstance(evaluator, Evaluator):
        return evaluator.to(device)
    model, config = load_classifier(evaluator, device=device)
    weak = near_chance(config)
    if weak is not None:
        warnings.warn(f"evaluator {evaluator}: {weak}", stacklevel=2)
    return Evaluator(model, config, Path(evaluator).resolve().name)


def _check_labels(labels: torch.Tensor, num_classes: int, who: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise SemsimError(f"label {bad}: outside the {who} evaluator's {num_classes} classes; score the set "
                          "with an evaluator trained on the same classes")


def recognition(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor, top_k: int = 5
                ) -> dict[str, torch.Tensor]:
    """Per image: ``prob`` (softmax probability of the true class), ``correct`` (top-1 right, 0/1),
    ``topk`` (true class among the ``top_k`` highest scores, 0/1) and ``pred`` (top-1 class)."""
    _check_labels(labels, evaluator.num_classes, f"'{evaluator.name}'")
    logits = evaluator.logits(images).float()
    labels = labels.to(logits.device).long()
    prob = logits.softmax(1).gather(1, labels[:, None])[:, 0]
    pred = logits.argmax(1)
    k = min(top_k, logits.shape[1])
    topk = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    return {"prob": prob, "correct": (pred == labels).float(), "topk": topk.float(), "pred": pred}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson, JASA 1927); NaN for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _need_evaluator(metric: str) -> MetricUnavailable:
    return MetricUnavailable(f"{metric} needs an evaluation classifier: create('{metric}', "
                             "evaluator=CHECKPOINT) or `semsim score --evaluator CHECKPOINT` "
                             "(train one with semsim train-evaluator)")


class ModelRecognition(nn.Module):
    """Model-based Recognition. Set-level (accuracy with a Wilson interval) with per-image columns.

    A set without class labels is skipped with a warning (no columns), since recognition needs the true class.
    """

    def __init__(self, evaluator: str | os.PathLike | Evaluator | None = None, top_k: int = 5,
                 level: float = 0.95) -> None:
        super().__init__()
        if evaluator is None:
            raise _need_evaluator("mr")
        self.evaluator = load_evaluator(evaluator)
        self.top_k = top_k
        self.level = level
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[torch.Tensor]] = {"mr_prob": [], "mr_correct": [], "mr_top5": []}
        self._unlabelled = False

    def update(self, original: torch.Tensor, reconstruction: torch.Tensor, labels: torch.Tensor | None = None,
               original_keys: Sequence[str] | None = None) -> None:
        if labels is None:
            self._unlabelled = True
            return
        out = recognition(self.evaluator, reconstruction, labels, self.top_k)
        for col, key in (("mr_prob", "prob"), ("mr_correct", "correct"), ("mr_top5", "topk")):
            self._parts[col].append(out[key].cpu())

    def per_image(self) -> dict[str, torch.Tensor]:
        if self._unlabelled:
            return {}
        return {col: torch.cat(parts) if parts else torch.zeros(0) for col, parts in self._parts.items()}

    def compute(self) -> dict[str, float]:
        if self._unlabelled:
            warnings.warn("mr skipped: the set has no class labels (manifest column 'label'); model-based "
                          "recognition needs the true class of each image", stacklevel=2)
            return {}
        cols = self.per_image()
        n = len(cols["mr_correct"])
        hits = int(cols["mr_correct"].sum())
        acc = hits / n if n else float("nan")
        lo, hi = wilson_interval(hits, n, self.level)
        clean = self.evaluator.clean_accuracy
        return {"mr_accuracy": acc, "mr_accuracy_ci_low": lo, "mr_accuracy_ci_high": hi,
                "mr_top5_accuracy": float(cols["mr_top5"].mean()) if n else float("nan"),
                "mr_relative": acc / clean if clean else float("nan")}


def pairwise_sq_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``a`` (N, ...) and ``b`` (M, ...): float64 (N, M)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    b_sq = b.pow(2).sum(1)
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for s in range(0, len(a), chunk):
        part = a[s:s + chunk]
        d = part.pow(2).sum(1, keepdim=True) + b_sq[None] - 2 * part @ b.T
        out[s:s + chunk] = d.clamp_min_(0).cpu()
    return out


def identified(distances: torch.Tensor, own: torch.Tensor, allowed: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Which reconstructions are identified (Yin et al., 2021): row ``i`` of ``distances`` (N, M) holds the
    distances from reconstruction ``i`` to the M candidates, ``own[i]`` is the column of its original and
    ``allowed`` (N, M) masks the candidates it competes with. Identified means the own original is strictly
    nearer than every other allowed candidate (a tie is not an identification); alone in its pool, it is."""
    n, m = distances.shape
    rows = torch.arange(n)
    mask = torch.ones(n, m, dtype=torch.bool) if allowed is None else allowed.clone()
    mask[rows, own] = False
    others = distances.masked_fill(~mask, float("inf")).min(1).values
    return distances[rows, own] < others


def _uint8_keys(x: torch.Tensor) -> list[bytes]:
    return [bytes(v) for v in x.mul(255).round().to(torch.uint8).flatten(1).numpy()]


class ImageIdentifiability(nn.Module):
    """Image Identifiability Precision (GradInversion, Yin et al., CVPR 2021), set-level with 0/1 per image.

    ``variants``: any of ``pixel``, ``lpips``, ``feature``. By default: ``pixel``, plus ``feature`` when an
    evaluator is given, plus ``lpips`` when its weights are available (a warning says when they are not).
    ``gallery``: extra candidate images (a dataset spec for :func:`semsim.data.datasets.load_dataset`, or an
    object with ``floats()`` and ``labels``), added to the set's originals. ``same_label``: compare only with
    candidates of the reconstruction's class when labels are known. For pixel and LPIPS distances every image
    is brought to the size of the set's first original (bilinear, antialiased) when sizes differ.
    """

    def __init__(self, variants: Sequence[str] | str | None = None,
                 evaluator: str | os.PathLike | Evaluator | None = None, gallery: Any = None,
                 same_label: bool = True, lpips_net: str = "alex") -> None:
        super().__init__()
        explicit = variants is not None
        if isinstance(variants, str):
            variants = [v.strip() for v in variants.split(",") if v.strip()]
        variants = list(variants) if variants is not None else ["pixel", "lpips"] + (["feature"] if evaluator else [])
        unknown = [v for v in variants if v not in IIP_VARIANTS]
        if unknown or not variants:
            raise SemsimError(f"iip variants {unknown or variants}: choose from {', '.join(IIP_VARIANTS)}")
        if "feature" in variants and evaluator is None:
            raise _need_evaluator("iip's feature variant")
        self.evaluator = load_evaluator(evaluator) if evaluator is not None else None
        self.lpips = None
        if "lpips" in variants:
            try:
                self.lpips = create(f"lpips_{lpips_net}")
            except SemsimError as exc:  # includes MetricUnavailable and an unregistered LPIPS
                if explicit:
                    raise MetricUnavailable(f"iip's lpips variant needs LPIPS ({exc})") from None
                warnings.warn(f"iip: lpips variant left out ({exc})", stacklevel=2)
                variants.remove("lpips")
        self.variants = variants
        self.same_label = same_label
        self._gallery_spec = gallery
        self._gallery: tuple[torch.Tensor, torch.Tensor] | None = None
        self._gallery_feats: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self._ori: dict[str, int] = {}  # original key -> candidate index
        self._ori_images: list[torch.Tensor] = []
        self._ori_labels: list[int] = []
        self._ori_feats: list[torch.Tensor] = []
        self._rec_images: list[torch.Tensor] = []
        self._rec_feats: list[torch.Tensor] = []
        self._own: list[int] = []
        self._labels: list[int] | None = []
        self._device = torch.device("cpu")
        self._result: dict[str, torch.Tensor] | None = None

    def update(self, original: torch.Tensor, reconstruction: torch.Tensor, labels: torch.Tensor | None = None,
               original_keys: Sequence[str] | None = None) -> None:
        keys = list(original_keys) if original_keys is not None else [
            f"#{len(self._own) + i}" for i in range(len(original))]
        self._device = reconstruction.device
        self._result = None
        if labels is None:
            self._labels = None
        elif self._labels is not None:
            self._labels.extend(int(v) for v in labels)
        new = []
        for i, key in enumerate(keys):
            if key not in self._ori:
                self._ori[key] = len(self._ori_images)
                self._ori_images.append(original[i].cpu())
                self._ori_labels.append(int(labels[i]) if labels is not None else -1)
                new.append(i)
        self._own.extend(self._ori[k] for k in keys)
        if "pixel" in self.variants or "lpips" in self.variants:
            self._rec_images.extend(reconstruction.cpu())
        if "feature" in self.variants:  # the constructor made sure an evaluator comes with this variant
            evaluator = cast(Evaluator, self.evaluator)
            if new:
                feats = evaluator.original_features(original[new], [keys[i] for i in new])
                self._ori_feats.append(feats.cpu())
            self._rec_feats.append(evaluator.features(reconstruction).cpu())

    def _load_gallery(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gallery's images (float, [0, 1]) and labels, loaded once."""
        if self._gallery is None:
            spec = self._gallery_spec
            if isinstance(spec, (str, os.PathLike)):
                from semsim.data.datasets import load_dataset

                spec = load_dataset(spec)
            self._gallery = (spec.floats(), torch.as_tensor(spec.labels).long())
        return self._gallery

    def _gallery_features(self) -> torch.Tensor:
        """The evaluator's features of the gallery, computed once."""
        if self._gallery_feats is None:
            images, _ = self._load_gallery()
            evaluator = cast(Evaluator, self.evaluator)
            dev = evaluator.device
            self._gallery_feats = torch.cat([evaluator.features(images[s:s + 256].to(dev)).cpu()
                                             for s in range(0, len(images), 256)])
        return self._gallery_feats

    def _pool(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Candidates: the set's originals, then the gallery images that are not exact copies of them
        (compared as uint8 at the set's size). Returns (images, labels, mask of the gallery images kept)."""
        images = list(self._ori_images)
        labels = torch.tensor(self._ori_labels, dtype=torch.long)
        kept = None
        if self._gallery_spec is not None:
            g_images, g_labels = self._load_gallery()
            size = tuple(images[0].shape[-2:])
            g_resized = resize_to(g_images, size)
            seen = set(_uint8_keys(torch.stack([resize_to(o[None], size)[0] for o in images])))
            kept = torch.tensor([k not in seen for k in _uint8_keys(g_resized)], dtype=torch.bool)
            images += list(g_resized[kept])
            labels = torch.cat([labels, g_labels[kept]])
        return images, labels, kept

    def _allowed(self, cand_labels: torch.Tensor) -> torch.Tensor | None:
        if not self.same_label or self._labels is None:
            return None
        same = torch.tensor(self._labels, dtype=torch.long)[:, None] == cand_labels[None, :]
        return same | (cand_labels < 0)[None, :]  # unlabelled gallery images compete with every class

    def _lpips_distances(self, recs: torch.Tensor, cands: torch.Tensor, allowed: torch.Tensor | None,
                         chunk: int = 256) -> torch.Tensor:
        """LPIPS between every reconstruction and its allowed candidates (inf elsewhere). The backbone runs
        once per image; each pair then costs the weighted squared difference of the unit-normalised
        activations, averaged over space and summed over layers (Zhang et al., 2018, Eq. 1)."""
        n, m = len(recs), len(cands)
        mask = allowed.clone() if allowed is not None else torch.ones(n, m, dtype=torch.bool)
        mask[torch.arange(n), torch.tensor(self._own)] = True

        lpips = cast(Any, self.lpips)  # an LPIPS module whenever the lpips variant is on

        def layers(images: torch.Tensor) -> list[torch.Tensor]:
            parts = [lpips.features(images[s:s + chunk].to(self._device))
                     for s in range(0, len(images), chunk)]
            return [torch.cat(level) for level in zip(*parts, strict=True)]

        f_rec, f_cand = layers(recs), layers(cands)
        dist = torch.full((n, m), float("inf"), dtype=torch.float64)
        ri, ci = mask.nonzero(as_tuple=True)
        for s in range(0, len(ri), chunk):
            r, c = ri[s:s + chunk].to(self._device), ci[s:s + chunk].to(self._device)
            total = cast(torch.Tensor, sum(lin((fr[r] - fc[c]).pow(2)).mean((1, 2, 3))
                                           for fr, fc, lin in zip(f_rec, f_cand, lpips.lins, strict=True)))
            dist[r.cpu(), c.cpu()] = total.double().cpu()
        return dist

    def _results(self) -> dict[str, torch.Tensor]:
        if self._result is None:
            self._result = self._identify() if self._own else {}
        return self._result

    def _identify(self) -> dict[str, torch.Tensor]:
        images, cand_labels, kept = self._pool()
        allowed = self._allowed(cand_labels)
        own = torch.tensor(self._own)
        out = {}
        if "pixel" in self.variants or "lpips" in self.variants:
            size = tuple(images[0].shape[-2:])
            cands = torch.stack([resize_to(c[None], size)[0] for c in images])
            recs = torch.stack([resize_to(r[None], size)[0] for r in self._rec_images])
            if "pixel" in self.variants:
                d = pairwise_sq_distance(recs, cands) / recs[0].numel()
                out["iip_pixel"] = identified(d, own, allowed)
            if "lpips" in self.variants:
                out["iip_lpips"] = identified(self._lpips_distances(recs, cands, allowed), own, allowed)
        if "feature" in self.variants:
            feats = torch.cat(self._ori_feats)
            if kept is not None:
                feats = torch.cat([feats, self._gallery_features()[kept]])
            d = pairwise_sq_distance(torch.cat(self._rec_feats), feats)
            out["iip_feature"] = identified(d, own, allowed)
        return {k: v.float() for k, v in out.items()}

    def per_image(self) -> dict[str, torch.Tensor]:
        return self._results()

    def compute(self) -> dict[str, float]:
        return {f"{k}_precision": float(v.mean()) for k, v in self._results().items()}


class FeatureDistance(nn.Module):
    """Distance between an evaluation classifier's penultimate features of original and reconstruction:
    ``feature_l2`` (Euclidean) and ``feature_cosine`` (1 - cosine similarity)."""

    def __init__(self, evaluator: str | os.PathLike | Evaluator | None = None) -> None:
        super().__init__()
        if evaluator is None:
            raise _need_evaluator("feature_distance")
        self.evaluator = load_evaluator(evaluator)

    def forward(self, original: torch.Tensor, reconstruction: torch.Tensor,
                labels: torch.Tensor | None = None, original_keys: Sequence[str] | None = None
                ) -> dict[str, torch.Tensor]:
        fo = self.evaluator.original_features(original, original_keys).float()
        fr = self.evaluator.features(reconstruction).float()
        return {"feature_l2": (fo - fr).norm(dim=1),
                "feature_cosine": 1 - F.cosine_similarity(fo, fr, dim=1, eps=1e-8)}


__all__ = ["EVALUATOR_METRICS", "Evaluator", "FeatureDistance", "ImageIdentifiability", "ModelRecognition",
           "clean_accuracy", "identified", "load_evaluator", "pairwise_sq_distance", "recognition",
           "resize_to", "wilson_interval"]
