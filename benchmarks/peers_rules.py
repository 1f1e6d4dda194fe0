"""Gradient rules and CAM variants against their peers, on the same weights.

A small CNN (a ReLU fused in a convolution, a ReLU layer, an Activation("relu"), max pooling,
a GAP-linear head; random weights, seeded) explains 8 images (units 0, 1, ..., 4, 0, ...) here,
with explain_lib, and in the peers' interpreter (`--peer-python`, default
.peers/bin/python; the recipe that builds it is benchmarks/peers-requirements.txt)
with the peers (`benchmarks/peers_rules_peer.py`): Captum
(GuidedBackprop, Deconvolution, GuidedGradCam) and pytorch-grad-cam (XGradCAM, HiResCAM,
EigenCAM, AblationCAM) on the same CNN in PyTorch with the weights copied, xplique
(GuidedBackprop, DeconvNet) on the same Keras model. The two sides exchange .npz files.

Printed per method and peer: the Pearson and Spearman correlations of each image's map with
the peer's, their mean and minimum over the images.

- Gradient rules: signed maps, the channel mean of the raw attribution on both sides
  (ours: `gradient_filter="identity"`, no post-processing).
- CAM variants: both sides' conventional output, ReLU then min-max normalised at the
  activation's resolution, then bilinearly upsampled to the input (ours: the shortcuts).

Run: .venv/bin/python -m benchmarks.peers_rules [--peer-python PATH] [--count 8]
"""

import argparse
import os
import subprocess
import tempfile

import keras
import numpy as np

import explain_lib
from benchmarks.common import machine
from benchmarks.peers_rules_peer import KERAS_WEIGHTS, keras_model
from explain_lib import inspection
from explain_lib.methods import rules

PEER_PYTHON = ".peers/bin/python"

COMPARED = [
    # (our method, our parameters, peer's key)
    ("guided_backprop", "raw", "captum_guided_backprop"),
    ("guided_backprop", "raw", "xplique_guided_backprop"),
    ("deconvnet", "raw", "captum_deconvnet"),
    ("deconvnet", "raw", "xplique_deconvnet"),
    ("guided_gradcam", "raw", "captum_guided_gradcam"),
    ("guided_gradcam", "nearest", "captum_guided_gradcam"),
    ("xgradcam", "shortcut", "gradcam_xgradcam"),
    ("hirescam", "shortcut", "gradcam_hirescam"),
    ("eigencam", "shortcut", "gradcam_eigencam"),
    ("eigencam", "projection", "gradcam_eigencam_projection"),
    ("ablationcam", "shortcut", "gradcam_ablationcam"),
]
"""What is compared with what: "raw" is the signed channel mean of the method's gradient
(no post-processing); "shortcut" the conventional normalised, upsampled map; "projection"
EigenCAM's projection as it is, at the activation's resolution; "nearest" Guided Grad-CAM
with Captum's nearest-neighbour upsampling of Grad-CAM."""


def build(seed: int = 0) -> keras.Model:
    """The benchmark's CNN with random weights and biases (so that ReLUs close)."""
    keras.utils.set_random_seed(seed)
    model = keras_model(keras)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    return model


def images(count: int, seed: int = 1) -> np.ndarray:
    """Noise plus a bright disc at a random place: maps with something to find."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:32, :32]
    batch = rng.uniform(0, 0.3, (count, 32, 32, 3)).astype("float32")
    for image in batch:
        r, c = rng.integers(6, 26, 2)
        image[(rows - r) ** 2 + (cols - c) ** 2 < 25] += rng.uniform(0.5, 1.0, 3)
    return batch


def ours(model, x, units):
    exposed = inspection.expose(model, "relu3")
    maps = {}
    raw = {"verbose": 0, "postprocessing": None, "gradient_filter": "identity"}
    for name in ("guided_backprop", "deconvnet"):
        maps[(name, "raw")] = explain_lib.explain(getattr(rules, name), model, x, units,
                                                  **raw)[1]
    maps[("guided_gradcam", "raw")] = explain_lib.explain(rules.guided_gradcam, exposed, x,
                                                          units, **raw)[1]
    for name in ("xgradcam", "hirescam", "eigencam", "ablationcam"):
        maps[(name, "shortcut")] = explain_lib.shortcuts.SHORTCUTS[name](exposed, x, units,
                                                                         verbose=0)[1]
    # Guided Grad-CAM with Captum's upsampling (nearest neighbours; 16x16 to 32x32 repeats
    # each value 2x2) in place of the official code's bilinear one.
    cam = explain_lib.explain(explain_lib.methods.gradcam, exposed, x, units, verbose=0,
                              resizing=False)[1]
    nearest = np.repeat(np.repeat(np.maximum(cam, 0), 2, axis=1), 2, axis=2)
    maps[("guided_gradcam", "nearest")] = maps[("guided_backprop", "raw")] * nearest
    maps[("eigencam", "projection")] = explain_lib.explain(
        explain_lib.methods.eigencam, exposed, x, units, verbose=0, resizing=False)[1]
    return {key: value[..., 0] for key, value in maps.items()}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(v):  # average ranks of ties (maps clipped at 0 have many)
        v = v.ravel()
        order = np.argsort(v, kind="stable")
        ranked = np.empty(len(v))
        ranked[order] = np.arange(len(v))
        values, inverse = np.unique(v, return_inverse=True)
        sums = np.bincount(inverse, ranked)
        return sums[inverse] / np.bincount(inverse)[inverse]

    return pearson(ranks(a), ranks(b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default=PEER_PYTHON)
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args(argv)

    model = build()
    x = images(args.count)
    logits = model.predict(x, verbose=0)
    units = (np.arange(args.count) % logits.shape[1]).astype("int32")  # every unit
    weights = dict(zip(KERAS_WEIGHTS, model.get_weights()))
    ours_maps = ours(model, x, units)
    with tempfile.TemporaryDirectory() as folder:
        source, destination = os.path.join(folder, "in.npz"), os.path.join(folder, "out.npz")
        np.savez(source, images=x, units=units, logits=logits, **weights)
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([args.peer_python, os.path.join(here, "peers_rules_peer.py"), source,
                        destination], check=True)
        peers = dict(np.load(destination))

    print(f"machine: {machine()}")
    print(f"units explained: {units.tolist()}; logits differ from PyTorch's by at most "
          f"{float(peers['torch_logit_error']):.1e}" + (
              f", from xplique's Keras model by {float(peers['xplique_logit_error']):.1e}"
              if "xplique_logit_error" in peers else ""))
    if "xplique_error" in peers:
        print(f"xplique did not run: {peers['xplique_error']}")
    print("| method | peer | Pearson mean (min) | Spearman mean (min) |")
    print("|---|---|---|---|")
    for name, kind, key in COMPARED:
        if key not in peers:
            continue
        theirs = peers[key]
        mine = ours_maps[(name, kind)]
        assert theirs.shape == mine.shape, (key, theirs.shape, mine.shape)
        p = [pearson(a, b) for a, b in zip(mine, theirs)]
        s = [spearman(a, b) for a, b in zip(mine, theirs)]
        label = name + {"projection": " (raw projection)",
                        "nearest": " (nearest upsampling, as Captum)"}.get(kind, "")
        print(f"| {label} | {key} | {np.mean(p):.4f} ({np.min(p):.4f}) | "
              f"{np.mean(s):.4f} ({np.min(s):.4f}) |")
        if kind == "projection":
            print(f"| {label}, up to sign | {key} | {np.mean(np.abs(p)):.4f} "
                  f"({np.min(np.abs(p)):.4f}) | signs agree on {int(np.sum(np.array(p) > 0))} "
                  f"of {len(p)} images |")


if __name__ == "__main__":
    main()
