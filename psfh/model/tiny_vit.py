"""TinyViT image encoder of LiteMedSAM, as a drop-in ``SamModel.vision_encoder``.

LiteMedSAM (Ma et al., MedSAM, 2024) distils SAM's ViT-H image encoder into a TinyViT
(Wu et al., ECCV 2022) that keeps SAM's 64 x 64 x 256 image embedding for a 256 x 256 input.
This module re-implements that architecture (the parameter names match LiteMedSAM's
checkpoint so the conversion in :mod:`psfh.model.convert` is a key rename) without timm, and returns
a ``SamVisionEncoderOutput`` so ``transformers.SamModel`` uses it like its own ViT.

Stage layout for a 256 x 256 input (embed dims 64/128/160/320). LiteMedSAM's patch embedding
is two 1x1 convolutions, so the encoder starts at full resolution, which is why it costs about
75 GFLOPs per image despite its 5.7 M parameters:
    patch_embed        B x 3 x 256 x 256 -> B x 64 x 256 x 256
    layers[0] MBConv   256 x 256 grid, then patch merging to 128 x 128
    layers[1] TinyViT  128 x 128 grid, window 7, then merging to 64 x 64
    layers[2] TinyViT  64 x 64 grid, window 14, then merging with stride 1 (64 x 64)
    layers[3] TinyViT  64 x 64 grid, window 7
    neck               B x 320 x 64 x 64 -> B x 256 x 64 x 64
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionEncoderOutput


@dataclass(frozen=True)
class TinyViTConfig:
    """Hyper-parameters of the TinyViT encoder (LiteMedSAM's values by default)."""

    image_size: int = 256
    in_channels: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    output_channels: int = 256
    # stages whose patch merging keeps the resolution (LiteMedSAM: the one into the last stage)
    stride_one_merges: tuple[int, ...] = (2,)
    # fold BatchNorm into the convolutions in eval mode (ConvBN); off only to benchmark the
    # unoptimised design (psfh.cli.benchmark) and to test that folding changes nothing
    fold_batchnorm: bool = True


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (names ``c`` and ``bn`` as in TinyViT).

    In eval mode the BatchNorm is folded into the convolution (one conv instead of a conv and a
    normalisation pass over a 256 x 256 x 256 activation): same result up to float rounding,
    faster (docs/PERFORMANCE.md, "One-off measurements"). The folded weights are cached and
    recomputed whenever any source tensor changes (training steps, ``load_state_dict``), so they
    can never go stale.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        self._folded: tuple | None = None
        self.fold_batchnorm = True  # set by TinyViTVisionEncoder from its config

    def _sources(self) -> tuple:
        tensors = (self.c.weight, self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var)
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _folded_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._sources()
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
                weight = self.c.weight * scale[:, None, None, None]
                bias = self.bn.bias - self.bn.running_mean * scale
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.fold_batchnorm:
            return self.bn(self.c(x))
        weight, bias = self._folded_weights()
        return F.conv2d(x, weight, bias, self.c.stride, self.c.padding, self.c.dilation, self.c.groups)


class PatchEmbed(nn.Module):
    """B x 3 x H x W -> B x C x H x W by two 1x1 convolutions (LiteMedSAM's variant)."""

    def __init__(self, in_ch: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_ch, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (B x C x H x W -> same)."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Tokens (B x H*W x C) or a map (B x C x H x W) -> tokens B x H'*W' x C_out."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            batch = x.shape[0]
            x = x.view(batch, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head attention inside one window with a learned relative-position bias.

    Input and output: (B * windows) x N x C with N = window * window. ``qkv`` is the projection
    that LoRA adapts (the paper's target).
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        indices = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                indices.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(indices).view(len(points), len(points)),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        # 1 x heads x N x N: with a 4-D mask torch's CPU flash kernel runs; with the 3-D heads x N x N
        # mask it fell back to the slower math path, with the same numbers up to float rounding
        # (`python -m experiments.profile_encoder`; docs/PERFORMANCE.md, "Attention on the fast kernel").
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP on tokens (B x N x C -> same)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, a depth-wise local conv, then an MLP; tokens B x H*W x C -> same."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int):
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        size, window = self.resolution, self.window
        if size == window:
            return self.attn(x)
        grid = x.view(batch, size, size, channels)
        pad = (window - size % window) % window
        if pad:
            grid = F.pad(grid, (0, 0, 0, pad, 0, pad))
        padded = size + pad
        n = padded // window
        windows = grid.view(batch, n, window, n, window, channels).transpose(2, 3)
        windows = self.attn(windows.reshape(batch * n * n, window * window, channels))
        grid = windows.view(batch, n, n, window, window, channels).transpose(2, 3)
        grid = grid.reshape(batch, padded, padded, channels)[:, :size, :size]
        return grid.reshape(batch, size * size, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        x = x + self._windowed_attention(x)
        grid = x.transpose(1, 2).reshape(batch, channels, self.resolution, self.resolution)
        x = self.local_conv(grid).view(batch, channels, tokens).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    """A list of ``blocks`` followed by an optional ``downsample`` (patch merging)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of B x C x H x W."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class TinyViTVisionEncoder(nn.Module):
    """LiteMedSAM's image encoder: B x 3 x S x S pixels -> B x 256 x S/4 x S/4 embedding."""

    def __init__(self, config: TinyViTConfig | None = None):
        super().__init__()
        self.config = config = config or TinyViTConfig()
        dims = config.embed_dims
        self.patch_embed = PatchEmbed(config.in_channels, dims[0])
        self.layers = nn.ModuleList()
        resolution = config.image_size
        for i, depth in enumerate(config.depths):
            last = i == len(config.depths) - 1
            stride = 1 if i in config.stride_one_merges else 2
            downsample = None if last else PatchMerging(resolution, dims[i], dims[i + 1], stride)
            if i == 0:
                blocks = [MBConv(dims[0], config.mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dims[i], resolution, config.num_heads[i], config.window_sizes[i],
                                       config.mlp_ratio, config.local_conv_size) for _ in range(depth)]
            self.layers.append(Stage(blocks, downsample))
            if not last:
                resolution = resolution // stride
        self.output_resolution = resolution
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.output_channels, 1, bias=False),
            LayerNorm2d(config.output_channels),
            nn.Conv2d(config.output_channels, config.output_channels, 3, padding=1, bias=False),
            LayerNorm2d(config.output_channels),
        )
        self.set_batchnorm_folding(config.fold_batchnorm)

    def set_batchnorm_folding(self, enabled: bool) -> None:
        """Fold BatchNorm into the convolutions at inference (the default), or not: the seed's
        unoptimised design (psfh.cli.benchmark) and the ONNX export run it unfolded."""
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fold_batchnorm = enabled

    def get_input_embeddings(self) -> nn.Module:
        """What transformers / peft ask a vision encoder for (SamModel.get_input_embeddings)."""
        return self.patch_embed

    def forward_prefix(self, pixel_values: torch.Tensor, stages: int) -> torch.Tensor:
        """The patch embedding and the first ``stages`` stages: B x 3 x S x S -> hidden state
        (a B x 64 x S x S map for ``stages=0``, tokens B x N x C after).

        Fold adapters that leave these layers alone share their output: a package runs them
        once per image and view for all folds, then :meth:`forward_from` per fold. Stage 0
        (MBConv at full resolution) and the patch embedding are half of the encoder's cost and
        hold no attention, so even the paper's adapters (LoRA on every qkv) share them.
        """
        x = self.patch_embed(pixel_values)
        for stage in self.layers[:stages]:
            x = stage(x)
        return x

    def forward_from(self, hidden: torch.Tensor, stage: int) -> SamVisionEncoderOutput:
        """Stages ``stage`` onwards and the neck: :meth:`forward_prefix`'s output ->
        ``last_hidden_state`` B x 256 x S/4 x S/4."""
        x = hidden
        for layer in self.layers[stage:]:
            x = layer(x)
        batch, _, channels = x.shape
        grid = self.output_resolution
        x = x.view(batch, grid, grid, channels).permute(0, 3, 1, 2)
        return SamVisionEncoderOutput(last_hidden_state=self.neck(x))

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> SamVisionEncoderOutput:
        """pixel_values: B x 3 x S x S -> ``last_hidden_state`` B x 256 x S/4 x S/4."""
        return self.forward_from(self.forward_prefix(pixel_values, 0), 0)


def set_batchnorm_folding(network: nn.Module, enabled: bool) -> None:
    """Fold BatchNorm into the convolutions at inference in every TinyViT encoder of ``network``
    (a SamModel, peft-wrapped or not), or not; a network without one is left as it is."""
    for module in network.modules():
        if isinstance(module, TinyViTVisionEncoder):
            module.set_batchnorm_folding(enabled)
