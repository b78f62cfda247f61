"""``robench certify`` (median-smoothing intervals) and ``robench transfer`` (N×N transfer of
stored adversarial images between targets)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robench.cli.app import DEVICE_HELP, app, emit_json, err, user_errors
from robench.core.errors import RobenchError


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RobenchError(f"{flag} takes a comma list of numbers, got {text!r}") from None
    if not vals:
        raise RobenchError(f"{flag}: give at least one value")
    return vals


@app.command("certify")
@user_errors
def certify_cmd(
    model: str = typer.Option(..., help="Target, e.g. birqa, ssim, lpips.alex (arch.tag for a weights variant)."),
    defense: Optional[str] = typer.Option(
        None, help="Defence (training recipe and/or inference wrappers) under the smoothing, e.g. aat."
    ),
    dataset: Optional[str] = typer.Option(None, help="Dataset; default: the built-in offline set."),
    split: str = typer.Option("test"),
    n: Optional[str] = typer.Option(
        None, help="Items (stratified by distortion), a whole number or 'all'; default: the profile's (quick: 32)."
    ),
    sigma: float = typer.Option(0.12, help="Noise level σ of the smoothing (pixel units of [0, 1])."),
    radius: str = typer.Option(
        "0.03,0.06,0.12",
        "--radius",
        help="L2 radii R (pixel units; comma list) to certify. "
        "An L∞ budget ε on a 3×H×W image has L2 up to ε·sqrt(3HW).",
    ),
    samples: int = typer.Option(100, help="Monte-Carlo noise draws per item (the certificate's order statistics)."),
    alpha: float = typer.Option(0.001, help="1 − confidence of both bounds together."),
    check_attack: Optional[str] = typer.Option(
        None,
        "--check-attack",
        help="pgd: attack the smoothed score inside "
        "each radius (L2 PGD, EOT over the noise, both directions) and report "
        "any point that leaves the certified interval.",
    ),
    attack_steps: int = typer.Option(10, "--attack-steps", help="Steps of the check attack."),
    attack_eot: int = typer.Option(4, "--attack-eot", help="Noise draws per step of the check attack (EOT)."),
    batch: int = typer.Option(8, help="Items per batch (each is scored samples times)."),
    profile: str = typer.Option("quick", help="quick | paper (image size of the built-in set, default items)."),
    seed: int = typer.Option(0, help="Items and noise seed."),
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    force: bool = typer.Option(False, "--force", help="Recompute a stored certification."),
    root: Optional[Path] = typer.Option(None, help="Dataset root (real datasets)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Certified score intervals by median smoothing (Chiang et al. 2020): per item the smoothed
    score and, per L2 radius, bounds that hold for every perturbation of that norm with confidence
    1 − alpha. Stored (resumable); robench report shows them."""
    from robench.cli.run import parse_n
    from robench.engine.certify import CertifySpec, certify

    spec = CertifySpec(
        model=model,
        defense=defense,
        dataset=dataset,
        split=split,
        n=parse_n(n),
        seed=seed,
        profile=profile,
        sigma=sigma,
        radii=_floats(radius, "--radius"),
        samples=samples,
        alpha=alpha,
        batch=batch,
        check_attack=check_attack,
        attack_steps=attack_steps,
        attack_eot=attack_eot,
        store=str(store) if store else None,
        device=device,
        force=force,
        dataset_options={"root": str(root)} if root else {},
    )
    rec = certify(spec, progress=True)
    if as_json:
        emit_json(rec)
        return
    err.print(
        f"{rec['config']['target']['name']} (defence {rec['config']['defense']['name']}): "
        f"σ {spec.sigma:g}, {spec.samples} draws, α {spec.alpha:g}, {rec['n_items']} items; "
        f"MOS scale: {rec['calibration'].get('source')}"
    )
    for s in rec["summary"]:
        mos = f" ({s['median_width_mos']:.3f} MOS)" if s["median_width_mos"] is not None else ""
        width = f"{s['median_width']:.4f}{mos}" if s["median_width"] is not None else "—"
        within = f"{100 * s['within_half_mos']:.0f} %" if s["within_half_mos"] is not None else "—"
        ranking = f"{100 * s['certified_ranking']:.0f} %" if s["certified_ranking"] is not None else "—"
        viol = (
            f"; check attack: {s['violations']} of {s['checked']} violated ({s['outside']} estimates outside)"
            if s["checked"]
            else ""
        )
        err.print(
            f"  R {s['radius']:g}: median width {width}; within ±0.5 MOS {within}; certified ranking "
            f"{ranking} of {s['pairs']} pairs; abstained {s['abstained']}{viol}"
        )
    err.print(f"store: {store or 'default'} (certification {rec['key'][:12]})")


@app.command("transfer")
@user_errors
def transfer_cmd(
    source: str = typer.Option(
        ...,
        "--source",
        help="Targets whose cells kept their adversarial images "
        "(robench run --keep-images), comma list, e.g. birqa,lpips.alex,topiq.fr,ssim,ms-ssim.",
    ),
    to: str = typer.Option(
        ...,
        "--to",
        help="Targets that score those images, comma list (the same list gives the "
        "N×N matrix; the diagonal is the white-box cells).",
    ),
    attacks: Optional[str] = typer.Option(
        None, help="Only the source cells of these attacks (comma list); default: every cell that kept its images."
    ),
    store: Optional[Path] = typer.Option(None, help="SQLite store (default $ROBENCH_HOME/runs/results.sqlite)."),
    batch: int = typer.Option(16, help="Images per forward pass."),
    force: bool = typer.Option(False, "--force", help="Score again pairs already stored."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score the adversarial images crafted against each source target with every other target
    (no attack is recomputed); robench report draws the matrices of gains (in each target's clean
    SD) and of SROCC under the ranking attack."""
    from robench.engine.grid import default_store
    from robench.engine.transfer import transfer

    names = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    out = transfer(
        store or default_store(),
        names(source),
        names(to),
        names(attacks) if attacks else None,
        device=device,
        batch=batch,
        progress=True,
        force=force,
    )
    if as_json:
        emit_json(out)
        return
    done = sum(p["status"] == "done" for p in out["pairs"])
    err.print(
        f"transfer: {done} pairs scored, {len(out['pairs']) - done} already stored ({out['seconds']:.1f} s); "
        f"robench report --store {out['store']} shows the matrices"
    )
