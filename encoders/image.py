"""Image encoders: a small fast CNN (the default for 64x64 frames) and any timm backbone.

Both take pixels as the env gives them: ``(B, H, W, C)`` uint8 (channels-last, the Gymnasium
convention) or ``(B, C, H, W)`` when the space is channels-first (what SB3's
``VecTransposeImage`` hands a features extractor). The layout is read from the space at build
time; the encoder converts to float and normalizes itself, so rollout code passes raw frames.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import (
    ENCODERS,
    Encoder,
    EncoderConfig,
    output_numel,
    require_box,
    space_str,
)


@dataclass(frozen=True)
class ImageLayout:
    """Where the channels are and how pixel values scale to [0, 1], read from a space."""

    channels_last: bool
    channels: int
    height: int
    width: int
    scale: float  # divide by this to get [0, 1]: 255 for uint8 spaces, 1 for float [0, 1]


def image_layout(space: gym.Space, who: str) -> ImageLayout:
    """The layout of an image space, or a one-line ValueError saying what is accepted."""
    what = "an image Box of shape (H, W, C) or (C, H, W), uint8 in [0, 255] or float in [0, 1]"
    box = require_box(space, who, 3, what)
    # Same heuristic as SB3's is_image_space_channels_first: channels is the smallest dim.
    smallest = int(np.argmin(box.shape))
    if smallest == 1:
        raise ValueError(f"encoder {who!r} needs {what}; got {space_str(space)}")
    if box.dtype == np.uint8:
        scale = 255.0
    elif (
        np.issubdtype(box.dtype, np.floating) and np.all(box.low >= 0.0) and np.all(box.high <= 1.0)
    ):
        scale = 1.0
    else:
        raise ValueError(f"encoder {who!r} needs {what}; got {space_str(space)}")
    if smallest == 2:
        h, w, c = box.shape
    else:
        c, h, w = box.shape
    return ImageLayout(channels_last=smallest == 2, channels=c, height=h, width=w, scale=scale)


def pixels_to_nchw(
    x: torch.Tensor, layout: ImageLayout, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """Raw pixels ``(B, H, W, C)`` or ``(B, C, H, W)`` -> a new float ``(B, C, H, W)`` tensor
    in [low, high] (the input is never modified)."""
    if layout.channels_last:
        x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    # One new tensor, scaled in place: each out-of-place op on a PPO minibatch of frames
    # (128 x 3 x 64 x 64 floats, 6 MB) is a fresh allocation whose page faults cost more than
    # the arithmetic (7.5 -> 1.5 ms per minibatch here).
    y = x.to(torch.float32, copy=True)
    return y.mul_((high - low) / layout.scale).add_(low)


# --- small CNN -------------------------------------------------------------------------------


CNN_POOLS = ("flatten", "mean", "spatial_softmax")
DEFAULT_KEYPOINTS = 32


@dataclass
class CNNImageConfig(EncoderConfig):
    """Config of the default image encoder."""

    channels: tuple[int, ...] = (16, 32, 64, 64)
    """Output channels of each 3x3 stride-2 convolution; each one halves the image size."""
    embed_dim: int = 256
    """Size of the output vector (a linear layer after the pooled feature map)."""
    pool: str = "flatten"
    """How the last feature map becomes the output vector: ``flatten`` (every cell's channels
    in place: where things are stays in the vector) or ``mean`` (the channels averaged over
    the cells: *what* is in the frame, not where). ``mean`` leaves positions to the tokens a
    think step attends to (``--agent.think.think-input attend``), which generalises where the
    flattened map memorises: regressing the cued ball's posture from 6,000 CueRecall frames
    (``benchmarks/cue_perception.py``), held-out R² 0.94 with the mean embedding beside the
    glimpse, 0.62 from the flattened map and 0.47 with the flattened map beside the glimpse.

    ``spatial_softmax`` (Levine et al. 2016; LeRobot's diffusion policy): a 1x1 convolution
    makes ``keypoints`` maps of the last feature map, a softmax over each map's cells turns it
    into a distribution, and the embedding is the head of each keypoint's expected (x, y) in
    [-1, 1]: *where* things are as coordinates, with no per-cell weights to memorise layouts.
    Its resolution is the last map's: fewer ``channels`` entries keep more of it (64x64 with
    one entry gives a 32x32 map). Regressing the cued ball's posture from 300 / 900 CueRecall
    layouts (``benchmarks/cue_perception.py``), held-out R² 0.44 / 0.69 with
    ``channels=(16,)``, against -0.20 / -0.03 for ``mean`` + glimpse on the default 8x8 map
    (keypoints on that 8x8 map: -0.29 at 300): the larger map and the pool together need
    fewer layouts, though still hundreds."""
    keypoints: int = DEFAULT_KEYPOINTS
    """Number of keypoints of ``pool="spatial_softmax"`` (the embedding's head sees 2 x this)."""

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.pool not in CNN_POOLS:
            raise ValueError(f"pool must be one of {', '.join(CNN_POOLS)}, got {self.pool!r}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(
                f"channels must be a non-empty tuple of positive ints, got {self.channels}"
            )
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if self.keypoints <= 0:
            raise ValueError(f"keypoints must be positive, got {self.keypoints}")
        if self.keypoints != DEFAULT_KEYPOINTS and self.pool != "spatial_softmax":
            raise ValueError(
                f"keypoints={self.keypoints} applies only to pool='spatial_softmax', got "
                f"pool={self.pool!r}; set the pool too (image.pool spatial_softmax)"
            )


@ENCODERS.register("cnn")
class CNNImageEncoder(Encoder):
    """A small, fast CNN: stride-2 3x3 convs + ReLU, a pool (flatten, mean or spatial softmax),
    linear + ReLU.

    64x64x3 -> 32 -> 16 -> 8 -> 4 spatial with the default channels (about 3.7 MMAC a frame,
    close to SB3's NatureCNN; the channels are kept small so encoding keeps up with the env,
    see benchmarks/encoder_throughput.py), keeping the spatial layout in the flatten so where
    the target is stays readable.
    Pixels are mapped to [-1, 1] (no dataset statistics exist for a random-init network).
    """

    config_class = CNNImageConfig
    modality = "image"
    gives_tokens = True

    def __init__(self, space: gym.Space, config: CNNImageConfig | None = None) -> None:
        super().__init__(space, config)
        cfg: CNNImageConfig = self.config
        self.layout = image_layout(space, "cnn")
        min_side = 2 ** len(cfg.channels)
        if min(self.layout.height, self.layout.width) < min_side:
            raise ValueError(
                f"encoder 'cnn' with {len(cfg.channels)} stride-2 convs needs images of at least "
                f"{min_side}x{min_side}; got {self.layout.height}x{self.layout.width} "
                f"(use fewer channels entries)"
            )
        layers: list[nn.Module] = []
        c_in = self.layout.channels
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            fmap = self.conv(
                torch.zeros(1, self.layout.channels, self.layout.height, self.layout.width)
            )
        _, c, h, w = fmap.shape
        pooled_dim = {"flatten": c * h * w, "mean": c, "spatial_softmax": 2 * cfg.keypoints}
        if cfg.pool == "spatial_softmax":
            self.keypoint_maps = nn.Conv2d(c, cfg.keypoints, 1)
        self.head = nn.Sequential(nn.Linear(pooled_dim[cfg.pool], cfg.embed_dim), nn.ReLU())
        self.embed_dim = cfg.embed_dim
        # Tokens: one per cell of the last feature map, its channels plus the cell's centre
        # (x, y) in [-1, 1], so a think step that attends to a cell also reads where it is.
        self.token_dim = c + 2
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        coords = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2)  # raster order
        self.register_buffer("cell_xy", coords, persistent=False)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = pixels_to_nchw(x, self.layout, -1.0, 1.0)  # (B, C, H, W) in [-1, 1]
        return self.conv(x)  # (B, c, h, w)

    def _embed(self, fmap: torch.Tensor) -> torch.Tensor:
        pool = self.config.pool
        if pool == "flatten":
            pooled = fmap.flatten(1)  # (B, c*h*w)
        elif pool == "mean":
            pooled = fmap.mean((2, 3))  # (B, c)
        else:  # spatial_softmax: each keypoint map's expected cell centre
            # contiguous first: the 1x1 conv on the stride-2 conv's channels-last output
            # took a slow path (3x the time of the whole pool at 32x32 cells, batch 8)
            logits = self.keypoint_maps(fmap.contiguous()).flatten(2)  # (B, K, h*w), raster
            pooled = (logits.softmax(-1) @ self.cell_xy[0]).flatten(1)  # (B, K, 2) -> (B, 2K)
        return self.head(pooled)  # (B, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(self._feature_map(x))  # (B, embed_dim)

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self._feature_map(x)  # (B, c, h, w)
        cells = fmap.flatten(2).transpose(1, 2)  # (B, h*w, c), raster order
        xy = self.cell_xy.expand(cells.shape[0], -1, -1)  # (B, h*w, 2)
        return self._embed(fmap), torch.cat([cells, xy], dim=-1)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)


# --- timm backbones --------------------------------------------------------------------------


@dataclass
class TimmImageConfig(EncoderConfig):
    """Config of the timm image encoder (``"timm"``, or ``"timm/<model_name>"`` by name)."""

    model_name: str = "resnet10t"
    """Any timm model name (``timm.list_models()``), e.g. resnet18, mobilenetv3_small_050."""
    pretrained: bool = False
    """Load pretrained weights; if they cannot be had (no hub), warn and use random init (an
    error with ``freeze``: a frozen random backbone is no feature extractor)."""
    pretrained_file: str | None = None
    """A local weights file (.safetensors or .pth) to load instead of downloading."""
    freeze: bool = False
    """Freeze the backbone (no gradients, BatchNorm statistics fixed, runs under no_grad)."""
    image_size: int | None = None
    """Resize frames to this square size before the backbone (None: feed them as they are).
    Pretrained weights usually work best near their training resolution."""
    embed_dim: int | None = None
    """Add a linear + ReLU projection to this size; None: the backbone's pooled features."""

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must name a timm model, e.g. 'resnet10t'")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 or None, got {self.image_size}")
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive or None, got {self.embed_dim}")


def create_timm_backbone(cfg: TimmImageConfig, in_chans: int) -> nn.Module:
    """``timm.create_model(..., num_classes=0)`` with pretrained weights when they can be had."""
    import timm  # imported lazily: `import encoders` should not pay for timm

    if not timm.is_model(cfg.model_name):
        close = timm.list_models(f"*{cfg.model_name.split('.')[0][:8]}*")[:6]
        raise ValueError(
            f"unknown timm model {cfg.model_name!r}; see timm.list_models() "
            f"(similar: {', '.join(close) or 'none'})"
        )
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans}
    if cfg.pretrained_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": cfg.pretrained_file}
        try:
            return timm.create_model(cfg.model_name, pretrained=True, **kwargs)
        except Exception as err:  # a bad local file is the user's to fix: fail, don't guess
            raise ValueError(
                f"could not load pretrained_file {cfg.pretrained_file!r} into {cfg.model_name!r}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
    if cfg.pretrained:
        try:
            return timm.create_model(cfg.model_name, pretrained=True, **kwargs)
        except Exception as err:  # no hub, no weights for this tag, ...: many exception types
            first = str(err).splitlines()[0] if str(err) else ""
            if cfg.freeze:  # a frozen random backbone only adds noise: never train on one
                raise ValueError(
                    f"timm could not load pretrained weights for {cfg.model_name!r} "
                    f"({type(err).__name__}: {first[:160]}), and freeze=True would freeze a "
                    "random backbone; give pretrained_file= a local weights file, or drop "
                    "freeze"
                ) from None
            warnings.warn(
                f"timm could not load pretrained weights for {cfg.model_name!r} "
                f"({type(err).__name__}: {first[:160]}); continuing with RANDOM initialization. "
                f"Set pretrained_file= to a local weights file, or HF_HUB_OFFLINE=1 to skip "
                f"the download attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
    return timm.create_model(cfg.model_name, pretrained=False, **kwargs)


@ENCODERS.register("timm")
class TimmImageEncoder(Encoder):
    """Any timm backbone as an image encoder, normalized with the backbone's own mean/std.

    ``build_encoder("timm/mobilenetv3_small_050", space)`` picks the backbone by name.
    The mean/std come from the model's ``pretrained_cfg`` (``timm.data.resolve_data_config``)
    and are non-persistent buffers: they follow from the model name, not from training.
    """

    config_class = TimmImageConfig
    modality = "image"

    def __init__(self, space: gym.Space, config: TimmImageConfig | None = None) -> None:
        super().__init__(space, config)
        cfg: TimmImageConfig = self.config
        self.layout = image_layout(space, "timm")
        c = self.layout.channels
        self.backbone = create_timm_backbone(cfg, in_chans=c)

        import timm.data

        data_cfg = timm.data.resolve_data_config(model=self.backbone)
        mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
        if len(mean) != c:  # e.g. a grayscale or RGB-D space: one shared statistic per channel
            mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, c, 1, 1), persistent=False)

        if cfg.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        size = cfg.image_size
        in_shape = (c, size or self.layout.height, size or self.layout.width)
        try:
            n_features = output_numel(self.backbone, in_shape)
        # e.g. images too small (RuntimeError), or a ViT with a fixed input size (timm asserts)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(
                f"timm model {cfg.model_name!r} cannot encode {in_shape[1]}x{in_shape[2]} "
                f"images ({str(err).splitlines()[0][:120]}); set image_size= to a size it accepts"
            ) from None
        if cfg.embed_dim is None:
            self.proj: nn.Module = nn.Identity()
            self.embed_dim = n_features
        else:
            self.proj = nn.Sequential(nn.Linear(n_features, cfg.embed_dim), nn.ReLU())
            self.embed_dim = cfg.embed_dim

    def train(self, mode: bool = True) -> TimmImageEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixels_to_nchw(x, self.layout)  # (B, C, H, W) in [0, 1]
        if self.config.image_size is not None:
            size = (self.config.image_size, self.config.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.sub_(self.mean).div_(self.std)  # x is a new tensor: in place is safe
        if self.config.freeze:
            with torch.no_grad():
                feats = self.backbone(x)  # (B, num_features)
        else:
            feats = self.backbone(x)
        return self.proj(feats)

    @classmethod
    def example_space(cls) -> gym.Space:
        return gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)

    @classmethod
    def example_config(cls) -> TimmImageConfig:
        return TimmImageConfig(model_name="test_resnet.r160_in1k", embed_dim=32)

    @classmethod
    def apply_variant(cls, config: TimmImageConfig, variant: str) -> TimmImageConfig:
        return replace(config, model_name=variant)
