"""Write the package's shipped weights (robench/core/shipped) from this machine's registered ones.

    python scripts/ship_weights.py birqa birqa.aat

Each file is this machine's registered weights (``robench weights ls``) stored in float16 (half
the bytes; the model computes in float32 after loading), with the training provenance, the
digest of the float32 file it was rounded from, and the val SROCC of the rounded weights
measured here. ``MANIFEST.json`` lists name → file, sha256, provenance. A shipped file is only
ever replaced by this script; ``robench train`` registers under ``$ROBENCH_HOME``.
"""

from __future__ import annotations

import json
import sys


import robench
from robench.core import weights as W
from robench.engine.train import evaluate


def main(names: list[str]) -> None:
    W.SHIPPED_DIR.mkdir(exist_ok=True)
    manifest_path = W.SHIPPED_DIR / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names:
        entry = W.read_index().get(name)
        if entry is None:
            raise SystemExit(f"{name}: not registered on this machine (robench weights ls)")
        src = W.weights_dir() / entry["file"]
        state = W.load_state_dict(src, sha256=entry["sha256"])
        config, provenance = W.checkpoint_meta(src)
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        opts = provenance.get("dataset_options") or {}
        val = robench.load_dataset(provenance.get("dataset", "mini"), split="val", **opts)
        tmp = W.SHIPPED_DIR / f".{name}.tmp.safetensors"
        W.save_safetensors(half, tmp, metadata={"config": config, "provenance": provenance})
        srocc = evaluate(robench.load_model(name, weights=str(tmp)), val)["srocc"]
        prov = {
            **provenance,
            "stored_as": "float16",
            "rounded_from_sha256": entry["sha256"],
            "val_srocc_shipped": float(srocc),
        }
        # the file's own metadata carries the full record too
        sha = W.save_safetensors(half, tmp, metadata={"config": config, "provenance": prov})
        for old in W.SHIPPED_DIR.glob(f"{name}-*.safetensors"):
            old.unlink()
        final = W.SHIPPED_DIR / f"{name}-{sha[:12]}.safetensors"
        tmp.replace(final)
        manifest[name] = {
            "name": name,
            "file": final.name,
            "sha256": sha,
            "source": "shipped",
            "rounded_from_sha256": entry["sha256"],
            "bytes": final.stat().st_size,
            "provenance": prov,
        }
        print(
            f"{name}: {final.name} ({final.stat().st_size / 1e6:.1f} MB), val SROCC float32 "
            f"{provenance.get('val_srocc', float('nan')):.4f} → float16 {srocc:.4f}",
            file=sys.stderr,
        )
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["birqa", "birqa.aat"])
