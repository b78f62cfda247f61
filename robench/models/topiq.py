"""TOPIQ-FR (Chen et al., IEEE TIP 2024): pyiqa's ``CFANet`` with the ``topiq_fr`` config.

Parameter names are pyiqa's, so a pyiqa checkpoint (``params``, ``module.`` stripped) loads
strictly. The ResNet-50 trunk is written here without torchvision/timm but with timm's
``features_only`` names (``semantic_model.conv1``, ``semantic_model.layer1.0.conv1`` …); its
batch norms are frozen (eval mode, no gradient to their parameters) as pyiqa does. Five trunk
levels (64/256/512/1024/2048 ch); per level a distance map ``sqrt((fd − fr)² + 1e-12)``, gated
pooling ``weight_pool`` on it, ``cat[fd, fr, d]`` → ``dim_reduce`` (1×1 → 256) → self-attention;
coarse-to-fine cross-attention; ``attn_pool`` → MLP → score; ImageNet mean/std input
normalisation, no resize at test time. Higher is better.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from robench.core import weights as W
from robench.core.registry import MODELS
from robench.core.target import OfficialWeights, Target, TargetCard

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PYIQA_RELEASE = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights"


# --------------------------------------------------------------------------------------------
# ResNet-50 trunk (timm features_only layout)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # stride on the 3×3 (v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNet50Features(nn.Module):
    """Returns the five timm ``features_only`` levels: act1 (stride 2), layer1..layer4."""

    channels = [64, 256, 512, 1024, 2048]

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), 1):
            stride = 1 if i == 1 else 2
            blocks = []
            for b in range(n):
                ds = None
                if b == 0 and (stride != 1 or inplanes != planes * 4):
                    ds = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
                    )
                blocks.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, ds))
                inplanes = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        feats = [x]
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


# --------------------------------------------------------------------------------------------
# attention blocks (pyiqa's pre-norm transformer layers, sequence-first)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        s = self.norm1(src)
        src = src + self.dropout1(self.self_attn(s, s, value=s, need_weights=False)[0])
        s = self.norm2(src)
        return src + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(s)))))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        # pyiqa defines self_attn but its forward uses only the cross attention: kept for the keys
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = self.norm2(memory)
        t = self.norm1(tgt)
        tgt = tgt + self.dropout2(self.multihead_attn(t, memory, value=memory, need_weights=False)[0])
        t = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(t)))))


class _Stack(nn.Module):
    """pyiqa's TransformerEncoder/Decoder: ``layers`` = deep copies of one layer."""

    def __init__(self, layer: nn.Module, n: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])

    def forward(self, x: torch.Tensor, *memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, *memory)
        return x


class CFANet(nn.Module):
    """TOPIQ-FR network (``use_ref=True``, ResNet-50, inter_dim 256, 4 heads, one attention layer)."""

    def __init__(self, inter_dim: int = 256, num_heads: int = 4, num_attn_layers: int = 1, dprate: float = 0.1):
        super().__init__()
        self.semantic_model = ResNet50Features()
        dims = ResNet50Features.channels
        dim_ff = min(4 * inter_dim, 2048)
        self.register_buffer("default_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("default_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        act = nn.GELU()
        sa = TransformerEncoderLayer(inter_dim, num_heads, dim_ff, dprate)
        self.sa_attn_blks = nn.ModuleList()
        self.dim_reduce = nn.ModuleList()
        self.weight_pool = nn.ModuleList()
        for dim in dims:
            self.weight_pool.append(
                nn.Sequential(
                    nn.Conv2d(dim, 64, 1, stride=1),
                    act,
                    nn.Conv2d(64, 64, 3, stride=1, padding=1),
                    act,
                    nn.Conv2d(64, 1, 3, stride=1, padding=1),
                    nn.Sigmoid(),
                )
            )
            self.dim_reduce.append(nn.Sequential(nn.Conv2d(dim * 3, inter_dim, 1, 1), act))
            self.sa_attn_blks.append(_Stack(sa, num_attn_layers))
        ca = TransformerDecoderLayer(inter_dim, num_heads, dim_ff, dprate)
        self.attn_blks = nn.ModuleList([_Stack(ca, num_attn_layers) for _ in range(len(dims) - 1)])
        self.attn_pool = TransformerEncoderLayer(inter_dim, num_heads, dim_ff, dprate)
        self.score_linear = nn.Sequential(
            nn.LayerNorm(inter_dim),
            nn.Linear(inter_dim, inter_dim),
            act,
            nn.LayerNorm(inter_dim),
            nn.Linear(inter_dim, inter_dim),
            act,
            nn.Linear(inter_dim, 1),
        )
        self.h_emb = nn.Parameter(torch.zeros(1, inter_dim // 2, 32, 1))
        self.w_emb = nn.Parameter(torch.zeros(1, inter_dim // 2, 1, 32))
        nn.init.trunc_normal_(self.h_emb, std=0.02)
        nn.init.trunc_normal_(self.w_emb, std=0.02)
        for m in (self.dim_reduce, self.sa_attn_blks, self.attn_blks, self.attn_pool):
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.kaiming_normal_(mod.weight)
                    nn.init.zeros_(mod.bias)
        self.fix_bn()

    def fix_bn(self) -> None:
        """Frozen batch norm in the trunk (pyiqa's fix_bn): statistics and affine fixed."""
        for m in self.semantic_model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for p in m.parameters():
                    p.requires_grad_(False)
                m.eval()

    def train(self, mode: bool = True) -> "CFANet":
        super().train(mode)
        self.fix_bn()
        return self

    def trunk_features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        return self.semantic_model((x01 - self.default_mean) / self.default_std)

    def head(self, dist_feats: list[torch.Tensor], ref_feats: list[torch.Tensor]) -> torch.Tensor:
        _, _, th, tw = dist_feats[-1].shape
        pos_emb = torch.cat(
            (self.h_emb.repeat(1, 1, 1, self.w_emb.shape[3]), self.w_emb.repeat(1, 1, self.h_emb.shape[2], 1)), dim=1
        )
        tokens = []
        for i in reversed(range(len(dist_feats))):
            fd, fr = dist_feats[i], ref_feats[i]
            diff = torch.sqrt((fd - fr) ** 2 + 1e-12)
            w = self.weight_pool[i](diff)
            # pyiqa: pool(cat[fd, fr, diff] · w). Pooling is per channel, so pooling each part
            # before the cat is the same numbers without materialising the 3×-wide full-resolution
            # tensor (about 20 % of a CPU attack step at 224 px)
            parts = [fd * w, fr * w, diff * w]
            if fd.shape[2] > th and fd.shape[3] > tw:
                parts = [F.adaptive_avg_pool2d(p, (th, tw)) for p in parts]
            feat = torch.cat(parts, dim=1)
            pe = (
                F.interpolate(pos_emb, size=feat.shape[2:], mode="bicubic", align_corners=False)
                .flatten(2)
                .permute(2, 0, 1)
            )
            feat = self.dim_reduce[i](feat).flatten(2).permute(2, 0, 1) + pe
            tokens.append(self.sa_attn_blks[i](feat))
        query = tokens[0]
        for i in range(len(tokens) - 1):
            query = self.attn_blks[i](query, tokens[i + 1])
        return self.score_linear(self.attn_pool(query).mean(dim=0)).flatten()

    def forward(self, dist: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk_features(dist), self.trunk_features(ref))


@MODELS.register("topiq.fr", summary="TOPIQ-FR (pyiqa CFANet, ResNet-50 trunk; higher is better)", lower_better=False)
class TOPIQFR(Target):
    def __init__(self):
        super().__init__()
        self.net = CFANet()
        self.card = TargetCard(
            name="topiq.fr",
            lower_better=False,
            score_range=(0.0, 1.0),
            min_size=32,
            summary="TOPIQ full-reference (CFANet, ResNet-50), pyiqa topiq_fr",
            license="pyiqa: PolyForm Noncommercial 1.0 / NTU S-Lab 1.0 (weights)",
            paper="Chen et al., TOPIQ: A Top-down Approach from Semantics to Distortions for IQA, IEEE TIP 2024",
            official_weights=(
                OfficialWeights(
                    f"{PYIQA_RELEASE}/cfanet_fr_kadid_res50-2c4cc61d.pth",
                    "cfanet_fr_kadid_res50-2c4cc61d.pth",
                    role="full",
                    sha256_prefix="2c4cc61d",
                ),
            ),
        )

    def reference(self, ref):
        return self.net.trunk_features(ref)

    def score_with(self, dist, prepared):
        return self.net.head(self.net.trunk_features(dist), prepared)

    def score(self, dist, ref):
        return self.score_with(dist, self.reference(ref))

    def load_upstream(self, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        W.load_into(self.net, state, where)

    def official_state(self) -> dict[str, torch.Tensor] | None:
        entry = W.lookup(self.card.name + "#official")
        if entry is None:
            return None
        return W.load_state_dict(entry["path"], sha256=entry["sha256"])
