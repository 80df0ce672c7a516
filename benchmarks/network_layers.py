"""The convolution layers of seven real networks, batch 1, as layer specs.

Written from the networks' published definitions (the papers and
torchvision's models, whose structure each function below follows), so that
the layers are what a user of those networks compiles, not shapes chosen for
convgen. Every conv is followed by batch norm in these networks except
SqueezeNet's and U-Net's, which have a bias of their own; at inference the
norm folds into the conv as a bias. DenseNet's 3x3 and transition convs have
none: no norm follows them directly. The activation is
the one applied right after the conv: ReLU, ReLU6, or none where the conv
feeds a residual add, a concatenation or a pre-activation norm, or where the
network's activation is one convgen does not fuse (MobileNetV3's hardswish
and the squeeze-excite's hardsigmoid: the conv is timed without it).

`layers(network)` gives each distinct layer once (the same shape with the
same activation counted once), in network order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    network: str
    name: str
    in_channels: int
    out_channels: int
    size: int                   # square input map
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    dilation: int = 1
    activation: str = "none"
    pool: dict | None = None    # a pool fused after the activation, as the network has it
    bias: bool = True

    def spec(self, layout: str) -> dict:
        """The layer as a spec mapping (convgen.load_spec takes it)."""
        name = self.name.replace(".", "_")
        data = {"name": f"{self.network}_{name}_{layout.lower()}", "op": "conv2d",
                "in_channels": self.in_channels, "out_channels": self.out_channels,
                "input_size": [self.size, self.size], "kernel_size": list(self.kernel),
                "stride": self.stride, "padding": list(self.padding), "groups": self.groups,
                "dilation": self.dilation, "bias": self.bias, "activation": self.activation, "layout": layout}
        if self.pool is not None:
            data["pool"] = self.pool
        return data

    @property
    def key(self) -> tuple:
        return (self.in_channels, self.out_channels, self.size, self.kernel, self.stride, self.padding,
                self.groups, self.dilation, self.activation, str(self.pool), self.bias)


def _conv(network, name, cin, cout, size, k, stride=1, pad=None, groups=1, dilation=1, act="none", pool=None,
          bias=True):
    kernel = (k, k) if isinstance(k, int) else k
    padding = tuple(dilation * (n - 1) // 2 for n in kernel) if pad is None else (pad, pad)
    return Layer(network, name, cin, cout, size, kernel, stride, padding, groups, dilation, act, pool, bias)


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def resnet18():
    """He et al. 2016, torchvision's resnet18: BasicBlocks [2, 2, 2, 2] at 64-512 channels."""
    net = "resnet18"
    yield _conv(net, "conv1", 3, 64, 224, 7, 2, act="relu")
    size, cin = 56, 64                                        # after the 3x3/2 max pool
    for stage, width in enumerate((64, 128, 256, 512), 1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            yield _conv(net, f"layer{stage}.{block}.conv1", cin, width, size, 3, stride, act="relu")
            if stride == 2 or cin != width:
                yield _conv(net, f"layer{stage}.{block}.downsample", cin, width, size, 1, stride)
            size = _out(size, 3, stride, 1)
            yield _conv(net, f"layer{stage}.{block}.conv2", width, width, size, 3)   # then add, ReLU
            cin = width


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v3_large():
    """Howard et al. 2019, torchvision's mobilenet_v3_large: inverted residuals with
    squeeze-excite; hardswish ("HS") layers are timed without their activation."""
    net = "mobilenetv3_large"
    # input channels, kernel, expanded channels, output channels, squeeze-excite, activation, stride
    blocks = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
              (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
              (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
              (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
              (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]
    yield _conv(net, "stem", 3, 16, 224, 3, 2)               # hardswish
    size = 112
    for i, (cin, k, expanded, cout, se, act, stride) in enumerate(blocks, 1):
        activation = "relu" if act == "RE" else "none"
        if expanded != cin:
            yield _conv(net, f"block{i}.expand", cin, expanded, size, 1, act=activation)
        yield _conv(net, f"block{i}.depthwise", expanded, expanded, size, k, stride, groups=expanded, act=activation)
        size = _out(size, k, stride, (k - 1) // 2)
        if se:
            squeeze = _make_divisible(expanded // 4)
            yield _conv(net, f"block{i}.se.fc1", expanded, squeeze, 1, 1, act="relu")
            yield _conv(net, f"block{i}.se.fc2", squeeze, expanded, 1, 1)            # hardsigmoid
        yield _conv(net, f"block{i}.project", expanded, cout, size, 1)
    yield _conv(net, "last", 160, 960, size, 1)               # hardswish


def shufflenet_v2():
    """Ma et al. 2018, torchvision's shufflenet_v2_x1_0: stages of [4, 8, 4] units,
    116, 232 and 464 channels; each unit's branch is 1x1, depthwise 3x3, 1x1."""
    net = "shufflenetv2"
    yield _conv(net, "conv1", 3, 24, 224, 3, 2, act="relu")
    size, cin = 56, 24                                        # after the 3x3/2 max pool
    for stage, (repeats, cout) in enumerate(((4, 116), (8, 232), (4, 464)), 2):
        half = cout // 2
        for unit in range(repeats):
            if unit == 0:   # stride 2: both branches see the whole input
                yield _conv(net, f"stage{stage}.0.branch1.depthwise", cin, cin, size, 3, 2, groups=cin)
                yield _conv(net, f"stage{stage}.0.branch1.pw", cin, half, size // 2, 1, act="relu")
                yield _conv(net, f"stage{stage}.0.branch2.pw1", cin, half, size, 1, act="relu")
                yield _conv(net, f"stage{stage}.0.branch2.depthwise", half, half, size, 3, 2, groups=half)
                size = _out(size, 3, 2, 1)
            else:           # stride 1: the branch sees half the channels
                yield _conv(net, f"stage{stage}.{unit}.branch2.pw1", half, half, size, 1, act="relu")
                yield _conv(net, f"stage{stage}.{unit}.branch2.depthwise", half, half, size, 3, groups=half)
            yield _conv(net, f"stage{stage}.{unit}.branch2.pw2", half, half, size, 1, act="relu")
        cin = cout
    yield _conv(net, "conv5", 464, 1024, size, 1, act="relu")


def squeezenet1_1():
    """Iandola et al. 2016, torchvision's squeezenet1_1: Fire modules (squeeze 1x1,
    expand 1x1 and 3x3, each with ReLU) between ceil-mode 3x3/2 max pools."""
    net = "squeezenet1_1"
    yield _conv(net, "conv1", 3, 64, 224, 3, 2, pad=0, act="relu")
    fires = [(55, 64, 16, 64), (55, 128, 16, 64), (27, 128, 32, 128), (27, 256, 32, 128),
             (13, 256, 48, 192), (13, 384, 48, 192), (13, 384, 64, 256), (13, 512, 64, 256)]
    for i, (size, cin, squeeze, expand) in enumerate(fires, 2):
        yield _conv(net, f"fire{i}.squeeze", cin, squeeze, size, 1, act="relu")
        yield _conv(net, f"fire{i}.expand1x1", squeeze, expand, size, 1, act="relu")
        yield _conv(net, f"fire{i}.expand3x3", squeeze, expand, size, 3, act="relu")
    yield _conv(net, "classifier", 512, 1000, 13, 1, act="relu")


def densenet121():
    """Huang et al. 2017, torchvision's densenet121: growth 32, blocks of
    [6, 12, 24, 16] layers (BN-ReLU-1x1 to 128, BN-ReLU-3x3 to 32). The norm
    and ReLU before each 3x3 fold into the 1x1 before it; a 3x3's output is
    concatenated, then normalized differently by each later layer, so it has
    no activation. A transition is a 1x1 halving the channels, then a 2x2
    average pool, fused."""
    net = "densenet121"
    yield _conv(net, "conv0", 3, 64, 224, 7, 2, act="relu")
    channels, size = 64, 56
    for block, count in enumerate((6, 12, 24, 16), 1):
        for layer in range(count):
            yield _conv(net, f"block{block}.layer{layer + 1}.conv1", channels, 128, size, 1, act="relu")
            yield _conv(net, f"block{block}.layer{layer + 1}.conv2", 128, 32, size, 3, bias=False)
            channels += 32
        if block < 4:
            yield _conv(net, f"transition{block}", channels, channels // 2, size, 1,
                        pool={"op": "avgpool2d", "kernel_size": 2}, bias=False)
            channels, size = channels // 2, size // 2


def regnetx_400mf():
    """Radosavovic et al. 2020, torchvision's regnet_x_400mf: stages of [1, 2, 7, 12]
    bottleneck blocks (1x1, grouped 3x3 with 16 channels a group, 1x1) at 32,
    64, 160 and 400 channels, the first block of each with stride 2."""
    net = "regnetx_400mf"
    yield _conv(net, "stem", 3, 32, 224, 3, 2, act="relu")
    size, cin = 112, 32
    for stage, (depth, width) in enumerate(((1, 32), (2, 64), (7, 160), (12, 400)), 1):
        for block in range(depth):
            stride = 2 if block == 0 else 1
            if block == 0:
                yield _conv(net, f"s{stage}.b1.proj", cin, width, size, 1, stride)
            yield _conv(net, f"s{stage}.b{block + 1}.a", cin, width, size, 1, act="relu")
            yield _conv(net, f"s{stage}.b{block + 1}.b", width, width, size, 3, stride, groups=width // 16,
                        act="relu")
            size = _out(size, 3, stride, 1)
            yield _conv(net, f"s{stage}.b{block + 1}.c", width, width, size, 1)      # then add, ReLU
            cin = width


def unet_encoder():
    """Ronneberger et al. 2015: the contracting path, two unpadded 3x3 convs with
    ReLU per level, 2x2 max pools between levels, one input channel. The paper's
    tile is 572x572; 252x252 here (a size the network takes: every map stays
    even before a pool) keeps a run to minutes, with the same kind of shapes."""
    net = "unet"
    size, cin = 252, 1
    for level, width in enumerate((64, 128, 256, 512, 1024), 1):
        yield _conv(net, f"down{level}.conv1", cin, width, size, 3, pad=0, act="relu")
        yield _conv(net, f"down{level}.conv2", width, width, size - 2, 3, pad=0, act="relu")
        size, cin = (size - 4) // 2, width


NETWORKS = {"resnet18": resnet18, "mobilenetv3_large": mobilenet_v3_large, "shufflenetv2": shufflenet_v2,
            "squeezenet1_1": squeezenet1_1, "densenet121": densenet121, "regnetx_400mf": regnetx_400mf,
            "unet": unet_encoder}


def layers(network: str) -> list[Layer]:
    """The network's distinct layers, in order."""
    seen, found = set(), []
    for layer in NETWORKS[network]():
        if layer.key not in seen:
            seen.add(layer.key)
            found.append(layer)
    return found
