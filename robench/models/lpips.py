"""LPIPS v0.1 (Zhang et al., CVPR 2018) exactly as the upstream ``lpips`` package computes it.

Input [0,1] → ``2x − 1`` → scaling layer ``(x − shift)/scale`` → trunk taps (AlexNet relu1..5 or
VGG16 relu1_2..relu5_3) → unit-normalise over channels ``x/(sqrt(Σx²) + 1e-10)`` → squared
difference → ``lin_k`` (Dropout + 1×1 conv, no bias) → spatial mean → sum over layers. A
distance: lower is better.

Module and parameter names follow upstream (``scaling_layer.shift``, ``net.slice1.0.weight``,
``lin0.model.1.weight``) so an upstream state dict loads strictly. The trunks are written here
(torchvision-free) with torchvision's layer indices, so torchvision's ImageNet files
(``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, keys ``features.K.*``) load into them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robench.core import weights as W
from robench.core.registry import MODELS
from robench.core.target import OfficialWeights, Target, TargetCard

# torchvision `features` layer lists; ints are conv (out_channels, kernel, stride, padding), "M" max-pool
ALEX_FEATURES = [
    (64, 11, 4, 2),
    "R",
    "M",
    (192, 5, 1, 2),
    "R",
    "M",
    (384, 3, 1, 1),
    "R",
    (256, 3, 1, 1),
    "R",
    (256, 3, 1, 1),
    "R",
    "M",
]
ALEX_SLICES = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
ALEX_CHANNELS = [64, 192, 384, 256, 256]
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
VGG_CHANNELS = [64, 128, 256, 512, 512]

UPSTREAM = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
TV = "https://download.pytorch.org/models"


def _alex_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for item in ALEX_FEATURES:
        if item == "R":
            layers.append(nn.ReLU(inplace=False))
        elif item == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        else:
            cout, k, s, p = item
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            cin = cout
    return layers


def _vgg_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for item in VGG_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU(inplace=False)]
            cin = item
    return layers


class Trunk(nn.Module):
    """Five slices of a torchvision-style ``features`` stack, keeping torchvision's indices."""

    def __init__(self, layers: list[nn.Module], slices: list[tuple[int, int]]):
        super().__init__()
        for i, (a, b) in enumerate(slices, 1):
            s = nn.Sequential()
            for k in range(a, b):
                s.add_module(str(k), layers[k])
            setattr(self, f"slice{i}", s)
        self.n = len(slices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, self.n + 1):
            x = getattr(self, f"slice{i}")(x)
            outs.append(x)
        return outs


class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    def __init__(self, chn_in: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, stride=1, padding=0, bias=False))


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


class LPIPSNet(nn.Module):
    """The upstream ``lpips.LPIPS`` module layout (v0.1, lpips=True, spatial=False)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        if net == "alex":
            self.net = Trunk(_alex_layers(), ALEX_SLICES)
            chns = ALEX_CHANNELS
        elif net == "vgg":
            self.net = Trunk(_vgg_layers(), VGG_SLICES)
            chns = VGG_CHANNELS
        else:
            raise ValueError(f"unknown LPIPS trunk {net!r}")
        for k, c in enumerate(chns):
            setattr(self, f"lin{k}", NetLinLayer(c))
        self.L = len(chns)

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        return [normalize_tensor(f) for f in self.net(self.scaling_layer(2.0 * x01 - 1.0))]

    def distance(self, f0: list[torch.Tensor], f1: list[torch.Tensor]) -> torch.Tensor:
        val = 0.0
        for k in range(self.L):
            val = val + getattr(self, f"lin{k}").model((f0[k] - f1[k]) ** 2).mean(dim=(2, 3), keepdim=True)
        return val.flatten()

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(in0), self.features(in1))


def upstream_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lpips >= 0.1.3 also saves ``lins.K.*`` (a ModuleList alias of ``linK``): fold it in."""
    out = {}
    for k, v in state.items():
        if k.startswith("lins."):
            idx, rest = k[len("lins.") :].split(".", 1)
            alias = f"lin{idx}.{rest}"
            if alias in state and not torch.equal(state[alias], v):
                raise W.WeightsError(f"LPIPS checkpoint has different {k} and {alias}")
            out.setdefault(alias, v)
        else:
            out[k] = v
    return out


class LPIPS(Target):
    """LPIPS distance between ``dist`` and ``ref`` (lower is better)."""

    NETS = {"alex": ("alexnet-owt-7be5be79.pth", "7be5be79"), "vgg": ("vgg16-397923af.pth", "397923af")}

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net_type = net
        self.lpips = LPIPSNet(net)
        trunk_file, trunk_prefix = self.NETS[net]
        self.card = TargetCard(
            name=f"lpips.{net}",
            lower_better=True,
            score_range=(0.0, 1.0),
            min_size=32 if net == "alex" else 16,
            summary=f"LPIPS v0.1, {'AlexNet' if net == 'alex' else 'VGG16'} trunk (distance)",
            license="BSD-2-Clause (lpips)",
            paper="Zhang et al., The Unreasonable Effectiveness of Deep Features as a Perceptual Metric, CVPR 2018",
            official_weights=(
                OfficialWeights(f"{UPSTREAM}/{net}.pth", f"{net}.pth", role="lin"),
                OfficialWeights(f"{TV}/{trunk_file}", trunk_file, role="trunk", sha256_prefix=trunk_prefix),
            ),
        )
        for p in self.lpips.scaling_layer.buffers():
            p.requires_grad_(False)

    def reference(self, ref):
        return self.lpips.features(ref)

    def score_with(self, dist, prepared):
        return self.lpips.distance(self.lpips.features(dist), prepared)

    def score(self, dist, ref):
        return self.score_with(dist, self.reference(ref))

    @torch.no_grad()
    def post_step(self) -> None:
        # upstream LPIPS training clamps the lin weights at 0 so the distance stays a
        # non-negative combination of per-layer distances
        for k in range(self.lpips.L):
            getattr(self.lpips, f"lin{k}").model[1].weight.clamp_(min=0)

    # --- official weights -----------------------------------------------------------------
    def load_upstream(self, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        """(a) a full upstream LPIPS state dict (scaling layer, trunk slices, lin layers)."""
        W.load_into(self.lpips, upstream_state_dict(state), where)

    weight_parts = ("lin", "trunk")

    def load_part(self, role: str, state: dict[str, torch.Tensor], where: str) -> None:
        """An upstream ``lin`` file (checked against this net's lin layers) or a torchvision
        ``trunk`` file, each joined with this instance's other part."""
        own = self.lpips.state_dict()
        if role == "lin":
            lin = upstream_state_dict(state)
            bad = [k for k in lin if k not in own or tuple(own[k].shape) != tuple(lin[k].shape)]
            missing = [k for k in own if k.startswith("lin") and k not in lin]
            if bad or missing:
                raise W.WeightsError(
                    f"{where} does not fit the LPIPS {self.net_type} lin layers: unexpected/mis-shaped "
                    f"{bad[:3]}, missing {missing[:3]}"
                )
        elif role != "trunk":
            raise W.WeightsError(f"role {role!r} is not a part of LPIPS")
        else:
            self.load_lin_and_trunk({k: v for k, v in own.items() if k.startswith("lin")}, state, where)

    def load_lin_and_trunk(
        self, lin: dict[str, torch.Tensor], trunk: dict[str, torch.Tensor], where: str = "lin+trunk"
    ) -> None:
        """(b) the upstream lin-weights file plus torchvision's ImageNet ``features.K.*`` trunk."""
        self.load_upstream(self.assemble(lin, trunk, where), where)

    def assemble(
        self, lin: dict[str, torch.Tensor], trunk: dict[str, torch.Tensor], where: str
    ) -> dict[str, torch.Tensor]:
        """A full upstream state dict from the lin-weights file and a torchvision trunk file."""
        lin = upstream_state_dict(lin)
        bad = [k for k in lin if not k.startswith("lin")]
        if bad:
            raise W.WeightsError(f"{where}: lin-weights file has non-lin keys, e.g. {bad[:3]}")
        # torchvision index + parameter name -> this trunk's slice key
        slot = {tuple(k.split(".", 2)[1:]): f"net.{k}" for k in self.lpips.net.state_dict()}
        trunk_keys = {}
        for k, v in trunk.items():
            if not k.startswith("features."):
                continue  # the classifier head is not part of LPIPS
            key = slot.get(tuple(k[len("features.") :].split(".", 1)))
            if key is None:
                raise W.WeightsError(f"{where}: trunk key {k!r} has no place in the LPIPS {self.net_type} trunk")
            trunk_keys[key] = v
        return {
            **trunk_keys,
            **lin,
            "scaling_layer.shift": self.lpips.scaling_layer.shift.clone(),
            "scaling_layer.scale": self.lpips.scaling_layer.scale.clone(),
        }

    def official_state(self) -> dict[str, torch.Tensor] | None:
        """Official weights available offline: a cached full dict, or lin + trunk files found in
        the weights cache / torch hub cache. None when absent."""
        full = W.lookup(self.card.name + "#official")
        if full is not None:
            return W.load_state_dict(full["path"], sha256=full["sha256"])
        lin_entry = W.lookup(self.card.name + "#lin")
        trunk_file, prefix = self.NETS[self.net_type]
        trunk_entry = W.lookup(self.card.name + "#trunk")
        trunk_path = Path(trunk_entry["path"]) if trunk_entry else W.torch_hub_checkpoint(trunk_file)
        lin_path = Path(lin_entry["path"]) if lin_entry else _packaged_lin(self.net_type)
        if lin_path is None or trunk_path is None:
            return None
        lin = W.load_state_dict(lin_path, sha256=lin_entry["sha256"] if lin_entry else None)
        trunk = W.load_state_dict(
            trunk_path,
            sha256=trunk_entry["sha256"] if trunk_entry else None,
            sha256_prefix=None if trunk_entry else prefix,
        )
        return self.assemble(lin, trunk, f"{lin_path} + {trunk_path}")


def _packaged_lin(net: str) -> Path | None:
    """The lin weights shipped inside an installed ``lpips`` wheel, if any."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    return p if p.is_file() else None


@MODELS.register("lpips.alex", summary="LPIPS v0.1, AlexNet trunk (distance; lower is better)", lower_better=True)
def lpips_alex() -> LPIPS:
    return LPIPS("alex")


@MODELS.register("lpips.vgg", summary="LPIPS v0.1, VGG16 trunk (distance; lower is better)", lower_better=True)
def lpips_vgg() -> LPIPS:
    return LPIPS("vgg")
