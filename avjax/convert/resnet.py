"""Import of a torchvision ResNet-50 state dict (`resnet50(pretrained=True)`) into Flax.

Keys as torchvision names them: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`,
`layer1.0.conv1.weight`, `layer1.0.downsample.0.weight` (conv), `layer1.0.downsample.1.*`
(BN), `fc.weight` / `fc.bias`. Mapping rule in `avjax.convert.torchvision_names`
(`layer1.0.downsample.1.running_mean` -> batch_stats `layer1_0/downsample_1/mean`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from avjax.convert import torchvision_names as tvn
from avjax.models.resnet import ResNet

INDEXED = ("layer1", "layer2", "layer3", "layer4", "downsample")


def resnet50_from_torch(
    state_dict: Mapping[str, Any], model: ResNet | None = None, *, keep_fc: bool = True
) -> dict:
    """torchvision ResNet state dict -> {"params", "batch_stats"} for `model`.

    Args:
      state_dict: numpy (or torch) values, bare or under "model"/"state_dict".
      model: the ResNet to fill; default ResNet-50 with `num_classes` read from `fc.weight`
        (0, i.e. no `fc`, when the dict has none or `keep_fc` is False).
      keep_fc: False drops `fc.*` (feature extraction, torchvision `fc = Identity`).
    """
    sd = dict(tvn.unwrap(state_dict))
    if not keep_fc:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if model is None:
        fc = sd.get("fc.weight")
        model = ResNet(num_classes=0 if fc is None else int(tvn.to_numpy(fc).shape[0]))
    abstract = tvn.abstract_variables(model, (1, 64, 64, 3))
    return tvn.convert(sd, abstract, "ResNet", indexed=INDEXED)
