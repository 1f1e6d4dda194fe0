"""Plain numpy references for the metrics' tests: one model call per step or subset, written
from the papers' definitions, independently of the library's tensor code."""

import math

import numpy as np


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def unit_score(model, image, unit, score):
    """The score of `unit` for one image: one model call."""
    logits = np.asarray(model(image[None].astype("float32"), training=False))[0]
    return float(softmax(logits)[unit] if score == "probability" else logits[unit])


def blur(image, sigma):
    """A Gaussian blur of one image (H, W, C): separable, reflected borders, the kernel cut
    at 3σ or at the image's size (what reflection can reach)."""
    out = image.astype("float64")
    for axis in (0, 1):
        length = out.shape[axis]
        radius = min(math.ceil(3 * sigma), length - 1)
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        kernel /= kernel.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        out = sum(w * np.take(padded, np.arange(length) + k, axis=axis)
                  for k, w in enumerate(kernel))
    return out.astype("float32")


def causal_auc(model, image, unit, saliency, start, finish, n_steps, score):
    """RISE's CausalMetric for one image and unit, step by step: pixels in decreasing order
    of `saliency` (ties: row-major) turn from `start` to `finish`; ⌈i·HW/n⌉ after step i;
    the trapezoid area of the n + 1 scores over [0, 1]."""
    height, width, channels = image.shape
    pixels = height * width
    order = np.argsort(-saliency.ravel(), kind="stable")
    scores = []
    for i in range(n_steps + 1):
        count = -(-i * pixels // n_steps)
        current = start.reshape(pixels, channels).copy()
        current[order[:count]] = finish.reshape(pixels, channels)[order[:count]]
        scores.append(unit_score(model, current.reshape(image.shape), unit, score))
    scores = np.array(scores)
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / n_steps


def average_ranks(values):
    """1-based ranks, ties sharing their mean rank (scipy's rankdata "average")."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def correlation(a, b, kind="pearson"):
    if kind == "spearman":
        a, b = average_ranks(a), average_ranks(b)
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mufidelity(model, image, unit, saliency, removed_masks, baseline, score, kind="pearson"):
    """μF for one image and unit, subset by subset: the correlation of the map summed over
    each removed subset with the drop of the score when it is set to `baseline`."""
    reference = unit_score(model, image, unit, score)
    drops, sums = [], []
    for removed in removed_masks:
        mask = removed[..., None]
        drops.append(reference - unit_score(model, image * (1 - mask) + baseline * mask, unit,
                                            score))
        sums.append(float((saliency * removed).sum()))
    return correlation(np.array(sums), np.array(drops), kind)
