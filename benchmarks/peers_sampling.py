"""The sampling and surrogate methods against their peers on the same weights.

GradientSHAP, LIME and KernelSHAP against Captum (a tiny CNN whose weights are copied into
the same network in PyTorch, NHWC -> NCHW), and LIME, KernelSHAP and Sobol attribution
against xplique (the same Keras model). The peers run in their own environment
(`--peer_python`, default .peers/bin/python; the recipe that builds it is
benchmarks/peers-requirements.txt) as a subprocess; the two sides exchange .npz files.

The methods are random: each is run with many samples, and the per-image Pearson correlation
of our map with the peer's is printed next to the correlation of two of our own runs with
different seeds (the noise floor: a peer cannot agree with us better than we agree with
ourselves). Every method explains the raw logit (`score="logit"`: Captum and xplique explain
the model's output as it is), on the same segmentation (a 4x4 grid of 8-pixel cells given
to Captum as its `feature_mask`, to xplique as its `map_to_interpret_space`), with hidden
segments set to 0 (Captum's baseline; xplique's `ref_value`, grey 0.5 by default for RGB,
is set to 0) and LIME with lime's kernel (width 0.25 on the cosine distance of the
coalitions) and `Ridge(alpha=1)`, passed to Captum as its `similarity_func` and
`interpretable_model`, to xplique as its `similarity_kernel` and `interpretable_model`.
xplique's own `distance_mode="cosine"` cannot stand in for lime's kernel: it measures the
perturbed pixels, not the coalitions, and as `1 - keras.losses.cosine_similarity`, which is
the negated cosine, so it is 1 + cos (the image itself weighs exp(-64) at width 0.25, the
far coalitions most). A further row runs xplique's LIME as shipped (its euclidean kernel of
width 45 on the pixels, `Ridge(alpha=2)`, grey hidden segments) on the same segments.

Usage:

    .venv/bin/python -m benchmarks.peers_sampling                 # about a minute on 2 cores
    .venv/bin/python -m benchmarks.peers_sampling --samples 4000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SIZE, GRID, UNITS = 32, 4, 5

PEER_SCRIPT = r'''
import json, sys
import numpy as np
data = dict(np.load(sys.argv[1]))
samples = int(sys.argv[3])
out, said = {}, {}
try:
    import torch
    from captum.attr import GradientShap, KernelShap, Lime
    from captum._utils.models.linear_model import SkLearnRidge

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(data["k1"].transpose(3, 2, 0, 1)))
        net[0].bias.copy_(torch.tensor(data["b1"]))
        net[2].weight.copy_(torch.tensor(data["k2"].transpose(3, 2, 0, 1)))
        net[2].bias.copy_(torch.tensor(data["b2"]))
        net[6].weight.copy_(torch.tensor(data["w"].T))
        net[6].bias.copy_(torch.tensor(data["b"]))
    x = torch.tensor(data["images"].transpose(0, 3, 1, 2)).double()
    said["captum_logits_max_error"] = float(np.abs(
        net(x).detach().numpy() - data["logits"]).max())
    units = [int(u) for u in data["units"]]
    mask = torch.tensor(data["labels"])[None, None]  # (1, 1, H, W): every channel

    def lime_kernel(original, perturbed, interpretable, **kwargs):
        z = interpretable.double()
        shown = z.sum()
        cosine = shown / torch.sqrt(shown * z.numel()) if shown > 0 else torch.tensor(0.0)
        return torch.sqrt(torch.exp(-(1 - cosine) ** 2 / 0.25 ** 2))

    gshap, lime, kshap = [], [], []
    background = torch.tensor(data["background"].transpose(0, 3, 1, 2)).double()
    for i, unit in enumerate(units):
        xi = x[i:i + 1]
        torch.manual_seed(i)
        g = GradientShap(net).attribute(xi, baselines=background, target=unit,
                                        n_samples=samples, stdevs=0.0)
        gshap.append(g[0].sum(0).detach().numpy())
        lm = Lime(net, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=lime_kernel)
        a = lm.attribute(xi, target=unit, baselines=0.0, feature_mask=mask, n_samples=samples,
                         perturbations_per_eval=64)
        lime.append(a[0, 0].detach().numpy())
        a = KernelShap(net).attribute(xi, target=unit, baselines=0.0, feature_mask=mask,
                                      n_samples=samples, perturbations_per_eval=64)
        kshap.append(a[0, 0].detach().numpy())
    out.update(captum_gradient_shap=np.stack(gshap), captum_lime=np.stack(lime),
               captum_kernel_shap=np.stack(kshap))
except Exception as error:  # a peer missing is reported, not fatal
    said["captum"] = f"{type(error).__name__}: {error}"
try:
    import keras
    import tensorflow as tf
    from xplique.attributions import KernelShap as XKernelShap
    from xplique.attributions import Lime as XLime
    from xplique.attributions import SobolAttributionMethod

    model = keras.Sequential([
        keras.Input((data["images"].shape[1], data["images"].shape[2], 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    model.set_weights([data[k] for k in ("k1", "b1", "k2", "b2", "w", "b")])
    x = tf.constant(data["images"])
    targets = tf.one_hot(data["units"], 5)
    labels = tf.constant(data["labels"].astype("int32"))
    mapping = lambda image: labels  # noqa: E731
    black = np.zeros(3, np.float32)  # xplique hides with grey (0.5) unless told
    out["xplique_sobol"] = np.asarray(SobolAttributionMethod(model).explain(x, targets))[..., 0]
    from sklearn import linear_model

    def lime_kernel(image, coalitions, perturbed):
        # lime's: sqrt(exp(-d^2 / 0.25^2)), d the cosine distance of the coalition to the
        # all-ones one. (xplique's distance_mode="cosine" is 1 + cos of the perturbed pixels:
        # Keras' cosine_similarity is the loss, the negated cosine.)
        z = tf.cast(coalitions, tf.float32)
        shown = tf.reduce_sum(z, 1)
        cosine = tf.math.divide_no_nan(shown, tf.sqrt(shown * tf.cast(tf.shape(z)[1],
                                                                         tf.float32)))
        return tf.sqrt(tf.exp(-tf.square(1 - cosine) / 0.25 ** 2))

    tf.random.set_seed(0)
    out["xplique_lime"] = np.asarray(XLime(
        model, map_to_interpret_space=mapping, nb_samples=samples, batch_size=64,
        interpretable_model=linear_model.Ridge(alpha=1.0), similarity_kernel=lime_kernel,
        ref_value=black).explain(x, targets))[..., 0]
    # xplique's own LIME as shipped but on the same segments: its euclidean kernel of width 45
    # on the pixels, Ridge(alpha=2), grey hidden segments.
    out["xplique_lime_defaults"] = np.asarray(XLime(
        model, map_to_interpret_space=mapping, nb_samples=samples,
        batch_size=64).explain(x, targets))[..., 0]
    out["xplique_kernel_shap"] = np.asarray(XKernelShap(
        model, map_to_interpret_space=mapping, nb_samples=samples, batch_size=64,
        ref_value=black).explain(x, targets))[..., 0]
except Exception as error:
    said["xplique"] = f"{type(error).__name__}: {error}"
np.savez(sys.argv[2], **{k: np.asarray(v, np.float64) for k, v in out.items()})
print(json.dumps(said))
'''


def model_and_data(count: int):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(UNITS)])
    rng = np.random.default_rng(0)
    # Smooth images (8-pixel blocks plus noise), a background of 8 others.
    blocks = rng.uniform(0, 1, (count + 8, 4, 4, 3))
    images = np.repeat(np.repeat(blocks, 8, 1), 8, 2)
    images = (images + 0.1 * rng.normal(size=images.shape)).astype("float32")
    return model, images[:count], images[count:]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; NaN where a map is constant (an epsilon would read a tiny map as 0)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(a @ b)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--peer_python", default=".peers/bin/python")
    args = parser.parse_args(argv)

    import explain_lib
    from explain_lib.methods import sampling, surrogate
    from benchmarks.common import machine

    model, images, background = model_and_data(args.images)
    logits = model.predict(images, verbose=0)
    units = np.argmax(logits, axis=1).astype("int32")
    labels = surrogate.grid_segments(SIZE, SIZE, GRID)
    common = {"verbose": 0, "postprocessing": None}
    ours = {}
    for seed in (0, 1):
        n = args.samples
        ours[("gradient_shap", seed)] = explain_lib.explain(
            sampling.gradient_shap, model, images, units, baselines=background, n_samples=n,
            chunk_size=100, seed=seed, **common)[1][..., 0]
        for name, method in (("lime", surrogate.lime), ("kernel_shap", surrogate.kernel_shap)):
            ours[(name, seed)] = explain_lib.explain(
                method, model, images, units, segmentation=labels, n_samples=n, baseline=0.0,
                score="logit", seed=seed, chunk_size=100, **common)[1][..., 0]
        # Sobol: the unscrambled sequence is the references'; seeds shift it.
        ours[("sobol", seed)] = explain_lib.explain(
            sampling.sobol, model, images, units, score="logit", seed=None if seed == 0 else 1,
            chunk_size=264, **common)[1][..., 0]

    weights = model.get_weights()
    with tempfile.TemporaryDirectory() as folder:
        given, returned = os.path.join(folder, "ours.npz"), os.path.join(folder, "peers.npz")
        np.savez(given, images=images, background=background, units=units, labels=labels,
                 logits=logits, **dict(zip(("k1", "b1", "k2", "b2", "w", "b"), weights)))
        done = subprocess.run([args.peer_python, "-c", PEER_SCRIPT, given, returned,
                               str(args.samples)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"The peer side failed:\n{done.stderr[-3000:]}")
        said = json.loads(done.stdout.strip().splitlines()[-1])
        peers = dict(np.load(returned))

    print(f"machine: {machine()}")
    print(f"{args.images} images {SIZE}x{SIZE}, {args.samples} samples, the predicted unit; "
          f"peer notes: {said}")
    print(f"{'method':<14}{'peer':<18}{'ours vs peer, per image':<40}{'ours vs ours (seeds 0, 1)'}")
    pairs = [("gradient_shap", "captum"), ("lime", "captum"), ("kernel_shap", "captum"),
             ("lime", "xplique"), ("lime", "xplique_defaults"), ("kernel_shap", "xplique"),
             ("sobol", "xplique")]
    for name, peer in pairs:
        key = f"{peer}_{name}" if peer != "xplique_defaults" else "xplique_lime_defaults"
        floor = [correlation(ours[(name, 0)][i], ours[(name, 1)][i])
                 for i in range(args.images)]
        if key not in peers:
            print(f"{name:<14}{peer:<18}{'(peer not available)':<40}"
                  f"{' '.join(f'{c:.3f}' for c in floor)}")
            continue
        versus = [correlation(ours[(name, 0)][i], peers[key][i]) for i in range(args.images)]
        print(f"{name:<14}{peer:<18}{' '.join(f'{c:.3f}' for c in versus):<40}"
              f"{' '.join(f'{c:.3f}' for c in floor)}")


if __name__ == "__main__":
    main()
