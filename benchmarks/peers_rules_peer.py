"""The peers' side of `benchmarks/peers_rules.py`, run by the peers' interpreter
(/work/peers/.venv: torch, Captum, pytorch-grad-cam, xplique; built as
benchmarks/peers-requirements.txt says): it imports nothing of explain_lib. Reads `IN.npz`
(the Keras CNN's weights, the images NHWC, the units), writes
`OUT.npz` with one (N, H, W) map per method and peer.

- Captum and pytorch-grad-cam: the same CNN in PyTorch, the weights copied (kernels
  (kh, kw, in, out) -> (out, in, kh, kw), Dense (in, out) -> Linear (out, in)), images NCHW;
- xplique: the same Keras model, rebuilt from the weights in this interpreter's Keras.

Run by benchmarks/peers_rules.py:  PEER_PYTHON benchmarks/peers_rules_peer.py IN.npz OUT.npz
"""

import sys

import numpy as np


def torch_model(weights):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.relu1 = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
            self.relu3 = nn.ReLU()
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(x)))
            x = self.relu3(self.conv3(self.relu2(self.conv2(x))))
            return self.fc(torch.flatten(self.gap(x), 1))

    net = Net().eval()
    with torch.no_grad():
        for name in ("conv1", "conv2", "conv3"):
            layer = getattr(net, name)
            layer.weight.copy_(torch.from_numpy(weights[f"{name}_kernel"].transpose(3, 2, 0, 1)))
            layer.bias.copy_(torch.from_numpy(weights[f"{name}_bias"]))
        net.fc.weight.copy_(torch.from_numpy(weights["fc_kernel"].T))
        net.fc.bias.copy_(torch.from_numpy(weights["fc_bias"]))
    return net


def torch_side(data, out):
    import torch
    from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam
    from pytorch_grad_cam import AblationCAM, EigenCAM, HiResCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    net = torch_model(data)
    x = torch.from_numpy(data["images"].transpose(0, 3, 1, 2).copy())
    units = [int(u) for u in data["units"]]
    target = torch.tensor(units)
    keras_logits = data["logits"]
    with torch.no_grad():
        logits = net(x).numpy()
    out["torch_logit_error"] = np.abs(logits - keras_logits).max()
    for name, method in [("captum_guided_backprop", GuidedBackprop(net)),
                         ("captum_deconvnet", Deconvolution(net)),
                         ("captum_guided_gradcam", GuidedGradCam(net, net.relu3))]:
        attribution = method.attribute(x.clone().requires_grad_(True), target=target)
        out[name] = attribution.detach().numpy().mean(axis=1)  # channel mean, as ours
    for name, klass in [("xgradcam", XGradCAM), ("hirescam", HiResCAM), ("eigencam", EigenCAM),
                        ("ablationcam", AblationCAM)]:
        with klass(model=net, target_layers=[net.relu3]) as cam:
            out[f"gradcam_{name}"] = cam(input_tensor=x,
                                         targets=[ClassifierOutputTarget(u) for u in units])
    # EigenCAM's raw projection (before its ReLU), to compare signs.
    activations = {}
    handle = net.relu3.register_forward_hook(
        lambda module, inputs, output: activations.update(a=output.detach().numpy()))
    with torch.no_grad():
        net(x)
    handle.remove()
    out["gradcam_eigencam_projection"] = get_2d_projection(activations["a"].copy())


def xplique_side(data, out):
    import keras
    import tensorflow as tf
    from xplique.attributions import DeconvNet, GuidedBackprop

    keras.utils.set_random_seed(0)
    model = keras_model(keras)
    model.set_weights([data[key] for key in KERAS_WEIGHTS])
    images = tf.constant(data["images"])
    out["xplique_logit_error"] = np.abs(model(images).numpy() - data["logits"]).max()
    targets = tf.one_hot(data["units"], 5)
    for name, klass in [("xplique_guided_backprop", GuidedBackprop),
                        ("xplique_deconvnet", DeconvNet)]:
        maps = np.asarray(klass(model, reducer="mean").explain(images, targets))
        out[name] = maps.reshape(maps.shape[:3])


KERAS_WEIGHTS = ["conv1_kernel", "conv1_bias", "conv2_kernel", "conv2_bias", "conv3_kernel",
                 "conv3_bias", "fc_kernel", "fc_bias"]
"""The Keras model's weights in `model.get_weights()` order."""


def keras_model(keras):
    """The benchmark's CNN (the same as `benchmarks.peers_rules.keras_model`): a ReLU fused
    in a convolution, a ReLU layer, an Activation("relu"), max pooling, a GAP-linear head."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.ReLU()(keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv3")(x)
    x = keras.layers.Activation("relu", name="relu3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def main(source, destination):
    data = dict(np.load(source))
    out = {}
    torch_side(data, out)
    try:
        xplique_side(data, out)
    except Exception as error:  # reported, not hidden: the table says xplique did not run
        out["xplique_error"] = np.array(f"{type(error).__name__}: {error}")
    np.savez(destination, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
