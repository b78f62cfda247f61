"""Issue 15.9: is TOPIQ-FR's gradient broken, or its score too curved for a large sign step?

Run after `robench train --model topiq.fr` (trained-here weights):
    python reports/probes/topiq_gradient.py
Prints, for 8 mini test items at 128 px: the change of q after a sign-gradient step of h against
its linear prediction h·‖g‖₁ (equal for tiny h when the gradient is right), the share of feature
entries sitting at the |fd − fr| kink, and how many images a sign step lowers, as published
(sqrt(u² + 1e-12)) and with the kink smoothed (sqrt(u² + 1e-2), not the published metric).
"""

import inspect

import torch

import robench.models.topiq as T
from robench.models import load_model
from robench.engine.items import load_items

torch.manual_seed(0)
t = load_model("topiq.fr").eval()
for p in t.parameters():
    p.requires_grad_(False)
items = load_items("mini", "test", 8, 0, {"size": 128})
x, r = items.dist, items.ref


def probe(label):
    f = t.bind(r)
    with torch.no_grad():
        q0 = f(x)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg).sum(), xg)
    lowered = []
    for h in (0.01, 0.1, 0.5, 1, 2, 4, 8):
        with torch.no_grad():
            dq = f((x + h / 255 * g.sign()).clamp(0, 1)) - q0
        lin = (h / 255 * g.abs()).flatten(1).sum(1)
        lowered.append(int((dq < 0).sum()))
        print(
            f"{label}: h={h}/255  mean dq {float(dq.mean()):+.4f}  linear prediction {float(lin.mean()):.4f}  "
            f"lowered {lowered[-1]}/8"
        )


probe("published")
with torch.no_grad():
    for i, (a, b) in enumerate(zip(t.net.trunk_features(x), t.net.trunk_features(r))):
        print(f"level {i}: share of |fd − fr| < 1e-3: {float(((a - b).abs() < 1e-3).float().mean()):.3f}")
code = inspect.getsource(T.CFANet.head).replace("1e-12", "1e-2")
ns: dict = {}
exec("import torch\nimport torch.nn.functional as F\n" + "\n".join(line[4:] for line in code.splitlines()), ns)
T.CFANet.head = ns["head"]
probe("kink smoothed")
