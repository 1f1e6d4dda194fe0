"""The model zoo of the suite and of `benchmarks/zoo.py`: one model per keras.applications
family and per KerasHub image classifier family, built small with random weights (the
smallest input each family takes), with a linear head or a softmax one.

keras.applications models take `classifier_activation` (softmax, their default, or None);
KerasHub classifiers take `activation`, but for MobileNet and MobileNetV5, which have none:
their softmax head is an `Activation("softmax")` after them.

Usage:

    model = build("ResNetV2", head="softmax")              # a keras.applications family
    model = build("hub:ViT", head=None)                     # a KerasHub family
"""

from typing import Dict, Optional, Tuple

import keras

UNITS = 5
"""Output units of every zoo model (a small head: the zoo is about structure)."""

APPLICATIONS: Dict[str, Tuple[str, int, dict]] = {
    # family: (constructor in keras.applications, the input side it takes, its arguments)
    "ConvNeXt": ("ConvNeXtTiny", 32, {}),
    "DenseNet": ("DenseNet121", 32, {}),
    "EfficientNet": ("EfficientNetB0", 32, {}),
    "EfficientNetV2": ("EfficientNetV2B0", 32, {}),
    "InceptionV3": ("InceptionV3", 75, {}),
    "InceptionResNetV2": ("InceptionResNetV2", 75, {}),
    "MobileNet": ("MobileNet", 32, {"alpha": 0.25}),
    "MobileNetV2": ("MobileNetV2", 32, {"alpha": 0.35}),
    "MobileNetV3": ("MobileNetV3Small", 32, {"alpha": 0.75}),
    "NASNetMobile": ("NASNetMobile", 32, {}),
    "ResNet": ("ResNet50", 32, {}),
    "ResNetV2": ("ResNet50V2", 32, {}),
    "VGG": ("VGG16", 32, {}),
    "Xception": ("Xception", 71, {}),
}

HUB_SIZE = 32
"""The input side of the KerasHub zoo models."""


def _hub_models():
    """{family: (backbone builder, classifier builder)} of KerasHub's image classifiers, the
    smallest configurations each family builds (at `HUB_SIZE`)."""
    import keras_hub

    models = keras_hub.models
    shape = (HUB_SIZE, HUB_SIZE, 3)
    return {
        "ViT": (lambda: models.ViTBackbone(
            image_shape=shape, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
            mlp_dim=32), models.ViTImageClassifier),
        "DeiT": (lambda: models.DeiTBackbone(
            image_shape=shape, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
            intermediate_dim=32), models.DeiTImageClassifier),
        "SwinTransformer": (lambda: models.SwinTransformerBackbone(
            image_shape=shape, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4,
            patch_size=4), models.SwinTransformerImageClassifier),
        "MiT": (lambda: models.MiTBackbone(
            layerwise_depths=[1, 1], num_layers=2, hidden_dims=[8, 16],
            layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0,
            layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], image_shape=shape),
            models.MiTImageClassifier),
        "CSPNet": (lambda: models.CSPNetBackbone(
            stem_filters=8, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1, 1],
            stackwise_strides=2, stackwise_num_filters=[8, 16], block_type="dark_block",
            stage_type="csp", down_growth=True, bottle_ratio=(0.5, 1.0),
            block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0), image_shape=shape),
            models.CSPNetImageClassifier),
        "HGNetV2": (lambda: models.HGNetV2Backbone(
            depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32], stem_channels=[3, 8, 8],
            hidden_act="relu", use_learnable_affine_block=False,
            stackwise_stage_filters=[[8, 8, 16, 1, 1, 3], [16, 8, 32, 1, 1, 3]],
            apply_downsample=[False, True], use_lightweight_conv_block=[False, False],
            image_shape=shape),
            lambda backbone, **kw: models.HGNetV2ImageClassifier(
                backbone=backbone, preprocessor=None, **kw)),
        "MobileNet": (lambda: models.MobileNetBackbone(
            stackwise_expansion=[[16], [32]], stackwise_num_blocks=[1, 1],
            stackwise_num_filters=[[8], [16]], stackwise_kernel_size=[[3], [3], [1]],
            stackwise_num_strides=[[2], [2], [1]], stackwise_se_ratio=[[None], [0.25]],
            stackwise_activation=[["relu"], ["hard_swish"]],
            stackwise_padding=[[1], [1], [1]], output_num_filters=32, depthwise_filters=8,
            depthwise_stride=2, depthwise_residual=False, squeeze_and_excite=0.5,
            last_layer_filter=32, image_shape=shape),
            lambda backbone, **kw: models.MobileNetImageClassifier(
                backbone=backbone, num_features=16, **kw)),
        "MobileNetV5": (lambda: models.MobileNetV5Backbone(
            stackwise_block_types=[["er"], ["uir", "uir"]], stackwise_num_blocks=[1, 2],
            stackwise_num_filters=[[8], [16, 16]], stackwise_strides=[[2], [2, 1]],
            stackwise_act_layers=[["relu"], ["relu", "relu"]],
            stackwise_exp_ratios=[[2.0], [2.0, 2.0]], stackwise_se_ratios=[[0.0], [0.0, 0.0]],
            stackwise_dw_kernel_sizes=[[0], [3, 3]],
            stackwise_dw_start_kernel_sizes=[[0], [0, 0]],
            stackwise_dw_end_kernel_sizes=[[0], [0, 0]],
            stackwise_exp_kernel_sizes=[[3], [0, 0]], stackwise_pw_kernel_sizes=[[1], [0, 0]],
            stackwise_num_heads=[[0], [0, 0]], stackwise_key_dims=[[0], [0, 0]],
            stackwise_value_dims=[[0], [0, 0]], stackwise_kv_strides=[[0], [0, 0]],
            stackwise_use_cpe=[[False], [False, False]], image_shape=shape, stem_size=8,
            num_features=32, use_msfa=False),
            lambda backbone, **kw: models.MobileNetV5ImageClassifier(
                backbone=backbone, head_hidden_size=16, **kw)),
        "ResNet": (lambda: models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2], block_type="basic_block", use_pre_activation=False,
            image_shape=shape), models.ResNetImageClassifier),
        "EfficientNet": (lambda: models.EfficientNetBackbone(
            stackwise_width_coefficients=[1.0, 1.0], stackwise_depth_coefficients=[1.0, 1.0],
            stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
            stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
            stackwise_expansion_ratios=[1, 2], stackwise_strides=[1, 2],
            stackwise_squeeze_and_excite_ratios=[0.0, 0.25], stackwise_block_types=["v1", "v1"],
            stackwise_force_input_filters=[0, 0], stackwise_nores_option=[False, False],
            min_depth=None, use_depth_divisor_as_min_depth=True, dropout=0.0,
            input_shape=shape), models.EfficientNetImageClassifier),
        "DenseNet": (lambda: models.DenseNetBackbone(
            stackwise_num_repeats=[1, 1, 1], compression_ratio=0.5, growth_rate=4,
            image_shape=shape), models.DenseNetImageClassifier),
        "VGG": (lambda: models.VGGBackbone(
            stackwise_num_repeats=[1, 1], stackwise_num_filters=[4, 8], image_shape=shape),
            lambda backbone, **kw: models.VGGImageClassifier(
                backbone=backbone, pooling_hidden_dim=8, **kw)),
        "Xception": (lambda: models.XceptionBackbone(
            stackwise_conv_filters=[[8, 8], [16, 16], [16, 16]],
            stackwise_pooling=[False, True, False], image_shape=shape),
            models.XceptionImageClassifier),
    }


HUB_FAMILIES = ("ViT", "DeiT", "SwinTransformer", "MiT", "CSPNet", "HGNetV2", "MobileNet",
                "MobileNetV5", "ResNet", "EfficientNet", "DenseNet", "VGG", "Xception")
"""Every image classifier family of KerasHub 0.32 (`keras_hub.models.*ImageClassifier`)."""

WITHOUT_ACTIVATION = ("MobileNet", "MobileNetV5")
"""KerasHub classifiers that take no `activation`."""

TRANSFORMERS = ("hub:ViT", "hub:DeiT")
"""The families whose attention the attention methods reach."""


FAMILIES = (*APPLICATIONS, *(f"hub:{family}" for family in HUB_FAMILIES))
"""Every zoo family: keras.applications' by name, KerasHub's as "hub:NAME"."""


def input_size(family: str) -> int:
    """The side of the square images `family`'s zoo model takes (a name of `FAMILIES`)."""
    return HUB_SIZE if family.startswith("hub:") else APPLICATIONS[family][1]


def build(family: str, head: Optional[str] = "softmax", seed: int = 0) -> keras.Model:
    """`family`'s zoo model (a name of `FAMILIES`) with `head` ("softmax" or None, linear),
    built with random weights from `seed`."""
    keras.utils.set_random_seed(seed)
    if not family.startswith("hub:"):
        name, side, arguments = APPLICATIONS[family]
        return getattr(keras.applications, name)(
            weights=None, input_shape=(side, side, 3), classes=UNITS,
            classifier_activation=head, **arguments)
    family = family[len("hub:"):]
    backbone, classifier = _hub_models()[family]
    if family in WITHOUT_ACTIVATION:
        model = classifier(backbone(), num_classes=UNITS)
        if head is None:
            return model
        return keras.Sequential([keras.Input((HUB_SIZE, HUB_SIZE, 3)), model,
                                 keras.layers.Activation(head)], name=f"{model.name}_{head}")
    return classifier(backbone(), num_classes=UNITS, activation=head)


__all__ = ["APPLICATIONS", "FAMILIES", "HUB_FAMILIES", "TRANSFORMERS", "UNITS", "build",
           "input_size"]
