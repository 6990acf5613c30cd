"""VGG16 identity classifier: torchvision's VGG16 convolutional layers with a head sized for the input.

One contract, pinned by ``tests/test_vgg.py``:

- ``forward_features(x)``: the last conv map, ``(n, 512, s, s)`` with ``s = input_size // 32``
  (7 at 224 px, 3 at 112 px, 1 at 32 px; ``512 * conv_width`` channels when the convs are narrowed);
- ``forward_embedding(x)``: fc7, the penultimate fully connected layer, ``(n, fc_width)``, not normalised
  (callers L2-normalise); before or after its ReLU as ``VGGConfig.embedding`` says;
- ``forward(x, labels=None)``: logits ``(n, num_classes)``; with a margin head (CosFace, ArcFace) and ``labels``
  given (training) the margin is applied to the true class. A model distilled from a teacher without labels has
  no identity head (``num_classes`` 0) and only the first two.

Distillation (``train --teacher``) trains a vector against the teacher's: fc7 itself (``fc7_width`` set to the
teacher's width) or a linear projection of fc7 (``projection``); ``forward(x, labels, distill=True)`` gives it
with the logits.

The head is never an upsampled 7x7 map: fc6 reads the flattened natural map (512 * s * s inputs: 25,088 at
224 px, 4,608 at 112 px, 512 at 32 px). An adaptive average pool to ``s x s`` sits in front only so that an
off-size input (say 120 px) still fits; at the sizes above it is the identity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from facesearch.errors import BadInput

EMBEDDINGS = ("pre_relu", "post_relu")
HEADS = ("softmax", "cosface", "arcface")
MARGIN_HEADS = ("cosface", "arcface")


@dataclass(frozen=True)
class VGGConfig:
    num_classes: int
    input_size: int = 112  # square input side in px; 32, 64, 112, 224, ... (multiples of 32 fit exactly)
    batch_norm: bool = True  # vgg16_bn layers; False gives the plain 2014 VGG16 layers
    fc_width: int = 4096  # width of fc6 and fc7 (4,096 classic; a few hundred identities need far fewer)
    # Channel multiplier of the 13 convs (1.0: VGG16's 64-128-256-512-512). Same layers, depth and pooling at
    # any value; 0.25 costs ~1/16 of the FLOPs, for CPU-minute runs such as the demo's.
    conv_width: float = 1.0
    # fc7 read before or after its ReLU. Post-ReLU is the classic "penultimate layer" feature; pre-ReLU keeps
    # the sign, which helps cosine similarity. With a margin head the head reads pre-ReLU fc7 either way.
    embedding: str = "post_relu"
    # "softmax" (plain linear fc8), "cosface" (normalised weights, s * (cos - m) for the true class) or
    # "arcface" (normalised weights, s * cos(theta + m) for the true class).
    head: str = "softmax"
    dropout: float = 0.5  # after fc6 and fc7 (classic 0.5)
    # BatchNorm on fc6 (before its ReLU) and on fc7's output, as the embedding heads of margin-loss face models
    # have it (ArcFace's "BN-Dropout-FC-BN"); False: the classic VGG16 fully connected layers.
    fc_batch_norm: bool = False
    cosface_scale: float = 30.0  # s of both margin heads (CosFace's value; ArcFace's paper used 64 on far more data)
    cosface_margin: float = 0.35  # m of CosFace (its paper's value)
    arcface_margin: float = 0.5  # m of ArcFace, an angle in radians (its paper's value)
    # fc7's width when it differs from fc6's (None: fc_width). Set to a teacher's width, fc7 itself is distilled.
    fc7_width: int | None = None
    # Width of a linear projection of fc7 trained against a teacher's vectors (0: none; fc7 itself is distilled).
    projection: int = 0

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise BadInput(f"embedding must be one of {EMBEDDINGS}, not {self.embedding!r}")
        if self.head not in HEADS:
            raise BadInput(f"head must be one of {HEADS}, not {self.head!r}")
        if self.input_size < 32:
            raise BadInput(f"{self.input_size}: at least 32 px (five 2x2 poolings)", param="input_size")
        if self.num_classes < 2 and self.num_classes != 0:  # 0: no identity head (a teacher alone trains it)
            raise BadInput(f"{self.num_classes} identities: a classifier needs at least 2")
        for name in ("fc_width", "fc7_width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadInput(f"{getattr(self, name)}: at least 1", param=name)
        if self.projection < 0:
            raise BadInput(f"{self.projection}: a width, 0 for none", param="projection")
        if not 0 <= self.dropout < 1:  # also refuses nan
            raise BadInput(f"{self.dropout}: a probability from 0 up to (not including) 1", param="dropout")
        if not (0 <= self.cosface_margin < 1 and self.cosface_scale > 0):
            raise BadInput(f"CosFace margin {self.cosface_margin} must lie in [0, 1) and scale "
                           f"{self.cosface_scale} be positive")
        if not 0 <= self.arcface_margin < math.pi / 2:
            raise BadInput(f"ArcFace margin {self.arcface_margin} must lie in [0, pi/2) radians")
        if not 0 < self.conv_width <= 4 or min(self.conv_channels) < 1:
            raise BadInput(f"{self.conv_width}: in (0, 4], and wide enough to leave every conv a channel",
                           param="conv_width")

    @property
    def margin(self) -> float | None:
        """The margin head's training margin (CosFace's or ArcFace's), None for softmax."""
        if self.head not in MARGIN_HEADS:
            return None
        return self.cosface_margin if self.head == "cosface" else self.arcface_margin

    @property
    def conv_channels(self) -> list[int]:
        """Output channels of the 13 convs, in order (VGG16's configuration "D" times ``conv_width``)."""
        from torchvision.models.vgg import cfgs  # lazy: importing facesearch.models stays cheap

        return [round(c * self.conv_width) for c in cfgs["D"] if c != "M"]

    @property
    def embedding_width(self) -> int:
        """fc7's width: the embedding's."""
        return self.fc7_width or self.fc_width

    @property
    def map_size(self) -> int:
        """Side of the last conv map that fc6 reads (5 poolings halve the input 5 times, rounding down)."""
        return self.input_size // 32

    def to_dict(self) -> dict:
        return asdict(self)

    # The defaults above are the face preset; the constructors below are the presets, one per dataset kind.
    @classmethod
    def faces(cls, num_classes: int, input_size: int = 112, **overrides) -> VGGConfig:
        """``facesearch train``'s architecture: the classic VGG16 head (4,096-wide fc6/fc7, post-ReLU fc7,
        dropout 0.5, softmax) until a GPU measurement says otherwise; ``overrides`` (None values ignored)."""
        return cls._preset(num_classes, input_size, {}, overrides)

    @classmethod
    def cifar10(cls, num_classes: int = 10, input_size: int = 32, **overrides) -> VGGConfig:
        """``facesearch cifar10 train``'s architecture: a 512-wide head without dropout (VGG16-BN's CIFAR form)."""
        return cls._preset(num_classes, input_size, {"fc_width": 512, "dropout": 0.0}, overrides)

    @classmethod
    def for_kind(cls, kind: str, num_classes: int, input_size: int, **overrides) -> VGGConfig:
        if kind not in ("faces", "cifar10"):
            raise BadInput(f"dataset kind must be 'faces' or 'cifar10', not {kind!r}")
        return (cls.faces if kind == "faces" else cls.cifar10)(num_classes, input_size, **overrides)

    @classmethod
    def _preset(cls, num_classes: int, input_size: int, preset: dict, overrides: dict) -> VGGConfig:
        return cls(num_classes=num_classes, input_size=input_size,
                   **{**preset, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, d: dict) -> VGGConfig:
        """A config saved by ``to_dict`` (a checkpoint's ``model_config``); fields this version lacks are refused,
        fields it added since take their defaults."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise BadInput(f"architecture fields this version does not know: {sorted(unknown)}")
        return cls(**d)


class MarginHead(nn.Module):
    """Large-margin head on normalised weights and features; without labels (inference) logits = s * cos.

    With labels (training) the true class's cosine is penalised: CosFace (Wang et al., 2018) subtracts ``m``,
    ArcFace (Deng et al., 2019) adds ``m`` to the angle. Past ``theta = pi - m`` ArcFace's cos(theta + m) would
    rise again, so there it falls back to CosFace's form with the margin ``m * sin(m)`` (as insightface does).
    """

    def __init__(self, in_features: int, num_classes: int, kind: str, scale: float, margin: float) -> None:
        super().__init__()
        if kind not in MARGIN_HEADS:
            raise ValueError(f"margin head must be one of {MARGIN_HEADS}, not {kind!r}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.kind, self.scale, self.margin = kind, scale, margin

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(x.float(), dim=1), F.normalize(self.weight.float(), dim=1))  # (n, classes)
        if labels is None:
            return self.scale * cos
        true = F.one_hot(labels.clamp(min=0), cos.shape[1]).bool() & (labels >= 0)[:, None]  # -1: no identity
        if self.kind == "cosface":
            return self.scale * torch.where(true, cos - self.margin, cos)
        m = self.margin
        cos_t = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        sin_t = torch.sqrt(1 - cos_t * cos_t)
        shifted = cos_t * math.cos(m) - sin_t * math.sin(m)  # cos(theta + m)
        shifted = torch.where(cos_t > math.cos(math.pi - m), shifted, cos_t - math.sin(math.pi - m) * m)
        return self.scale * torch.where(true, shifted, cos)


class VGG16(nn.Module):
    """VGG16 (13 convs from torchvision, ``weights=None``) + fc6, fc7 and an N-way head (fc8)."""

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers  # lazy: importing facesearch.models stays cheap

        self.config = config
        # The conv stack of torchvision.models.vgg16(_bn): 13 conv (+BN) + ReLU, 5 max-pools. Built with
        # make_layers, as vgg16_bn(weights=None) builds it, without allocating its 25,088-wide classifier.
        channels = iter(config.conv_channels)
        self.features = make_layers([v if v == "M" else next(channels) for v in cfgs["D"]],
                                    batch_norm=config.batch_norm)
        side = config.map_size
        self.pool = nn.AdaptiveAvgPool2d(side)  # identity at multiples of 32 px
        width, width7 = config.fc_width, config.embedding_width
        self.fc6 = nn.Linear(config.conv_channels[-1] * side * side, width)
        self.fc7 = nn.Linear(width, width7)
        self.fc6_bn = nn.BatchNorm1d(width) if config.fc_batch_norm else nn.Identity()
        self.fc7_bn = nn.BatchNorm1d(width7) if config.fc_batch_norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        # The training set's mean embedding, subtracted by forward_embedding. Set by the trainer with each best
        # checkpoint; zero in an untrained model. Without it, fc7 vectors share a large common component and
        # every cosine similarity crowds near 1 (0.99+ in short runs), which blurs ranks and thresholds.
        self.register_buffer("embedding_mean", torch.zeros(width7))
        if config.num_classes == 0:
            self.head = None  # distilled from a teacher only: no identities to classify
        elif config.head in MARGIN_HEADS:
            self.head = MarginHead(width7, config.num_classes, config.head, config.cosface_scale, config.margin)
        else:
            self.head = nn.Linear(width7, config.num_classes)
        self.projection = nn.Linear(width7, config.projection) if config.projection else None
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation for the convs (Kaiming) and BN (unit scale, zero shift).

        The linear layers keep PyTorch's default U(+-1/sqrt(fan_in)): at the classic 4,096 width that is the
        scale of torchvision's N(0, 0.01), and unlike a fixed 0.01 it stays trainable at narrow widths.
        """
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv map (after the fifth max-pool): (n, 3, H, W) -> (n, 512 * conv_width, H//32, W//32)."""
        return self.features(x)

    def _fc7(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 before its ReLU, (n, fc_width) (after its BatchNorm with ``fc_batch_norm``)."""
        x = torch.flatten(self.pool(self.forward_features(x)), 1)  # (n, channels * s * s)
        x = self.dropout(F.relu(self.fc6_bn(self.fc6(x))))
        return self.fc7_bn(self.fc7(x))

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 as ``config.embedding`` says, minus the training set's mean embedding, (n, fc_width); not normalised."""
        fc7 = self._fc7(x)
        emb = F.relu(fc7) if self.config.embedding == "post_relu" else fc7
        return emb - self.embedding_mean.to(emb.dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, distill: bool = False):
        """Logits (n, num_classes). ``labels`` only matters for a margin head (the training margin; -1: a face
        with no identity).

        With ``distill`` (training under a teacher; one pass through DDP) a pair: the logits (None without an
        identity head) and the vector distilled to the teacher, the projection of fc7 or fc7 itself (before its
        ReLU), ``(n, projection or fc7 width)``.
        """
        fc7 = self._fc7(x)
        if distill:
            logits = self._logits(fc7, labels) if self.head is not None else None
            return logits, (self.projection(fc7) if self.projection is not None else fc7)
        if self.head is None:
            raise BadInput("this model has no identity head (it was distilled from a teacher without labels): "
                           "it embeds faces, it does not classify them")
        return self._logits(fc7, labels)

    def _logits(self, fc7: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.config.head in MARGIN_HEADS:
            return self.head(fc7, labels)  # a cosine head reads signed fc7
        return self.head(self.dropout(F.relu(fc7)))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d]]:
        """The 13 convolutions in order, named ``conv1_1`` .. ``conv5_3`` (VGG's block_index names)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        per_block = (2, 2, 3, 3, 3)
        names = [f"conv{b + 1}_{i + 1}" for b, n in enumerate(per_block) for i in range(n)]
        return list(zip(names, convs))

    def fc_layers(self) -> list[tuple[str, nn.Module]]:
        """The fully connected layers in order, each as the module whose output is the layer's pre-activation
        (what explain reads): fc6, fc7 (their BatchNorm with ``fc_batch_norm``) and the head (fc8: Linear or
        MarginHead)."""
        bn = self.config.fc_batch_norm
        layers = [("fc6", self.fc6_bn if bn else self.fc6), ("fc7", self.fc7_bn if bn else self.fc7)]
        return layers + ([("fc8", self.head)] if self.head is not None else [])
