"""``index.html`` of a report: one self-contained file that opens from disk with no server and no
network — CSS and JavaScript inline, every image (figures and the adversarial-example gallery)
embedded as a base64 ``data:`` URI. Embedded, not beside it: the file can be mailed, attached to
an issue or moved without a folder, and a browser makes no request at all to show it (the gallery's
128-px PNGs are ~20–40 KB each; its size is printed in the page's footer).

Sections: the run's setting (targets with weights sha256 and provenance, defences, attacks with
their resolved parameters, protocols, ε, data, seeds, profile, device, versions, commit); the
leaderboard (one row per target × defence, sortable by any column in plain JS; default order:
worst-case SROCC under the ranking attack, most robust first; every cell flag a badge; flagged rows
marked unreliable); every table of the Markdown report; every figure; the gallery.

``index.html#selftest`` runs the page's self-test (what the browser test reads): leaderboard rows,
sorting, every image decoded, the resources the page loaded."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from robench.core import flags as FL

#: items per cell the gallery shows (of the TOP_ITEMS a run keeps)
GALLERY_PER_CELL = 2


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _png(arr: np.ndarray) -> str:
    """A 3×H×W float image in [0, 1] as a PNG data URI."""
    from PIL import Image

    a = (np.clip(np.transpose(arr, (1, 2, 0)), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_uri(path: Path) -> str:
    mime = {".png": "image/png", ".svg": "image/svg+xml"}.get(path.suffix, "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _num(v: Any, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------
# the setting


_PROVENANCE_SHOWN = (
    "dataset",
    "profile",
    "epochs",
    "recipe",
    "seed",
    "val_srocc",
    "git_commit",
    "steps",
    "train_seconds",
)


def setting(raw, weights: dict[str, dict]) -> str:
    """The run's setting from the stored cells (raw store rows) and weights provenance."""
    cfgs = list(raw["config"])
    defs = {json.dumps(c["defense"], sort_keys=True, default=str): c["defense"] for c in cfgs}
    atts = {json.dumps(c["attack"], sort_keys=True, default=str): c["attack"] for c in cfgs}
    out = [
        "<section id='setting'><h2>Setting</h2>",
        "<h3>Targets</h3><table class='plain'><tr><th>target</th><th>weights sha256</th><th>source</th>"
        "<th>provenance</th></tr>" + "".join(_target_rows(cfgs, weights)) + "</table>",
        "<h3>Defences</h3><ul>"
        + "".join(
            f"<li><code>{_e(d['name'])}</code>: training {_e(d.get('training'))}; "
            f"inference {_e([i.get('name') for i in d.get('inference') or []])}</li>"
            for d in defs.values()
        )
        + "</ul>",
        "<h3>Attacks (resolved parameters)</h3><ul>"
        + "".join(
            f"<li><code>{_e(a['name'])}</code> ({_e(a.get('needs'))}): <code>{_e(json.dumps(a.get('params'), default=str))}"
            f"</code></li>"
            for a in atts.values()
        )
        + "</ul>",
        _protocol_list(raw, cfgs),
    ]
    return "\n".join(out)


def _target_rows(cfgs: list[dict], weights: dict[str, dict]) -> list[str]:
    targets = {}
    for c in cfgs:
        t = c["target"]
        targets[(t["name"], t["weights_sha256"])] = t.get("weights_source", "")
    rows = []
    for (name, sha), src in targets.items():
        prov = (weights.get(sha) or {}).get("provenance") or {}
        keep = {k: prov[k] for k in _PROVENANCE_SHOWN if k in prov}
        rows.append(
            f"<tr><td>{_e(name)}</td><td><code>{_e(sha)}</code></td><td>{_e(src)}</td>"
            f"<td><code>{_e(json.dumps(keep, default=str))}</code></td></tr>"
        )
    return rows


def _protocol_list(raw, cfgs: list[dict]) -> str:
    from robench.core.directions import protocol_of

    eps = sorted({float(e) for c in cfgs for e in c["eps"]})
    dirs = sorted({c.get("direction") or "up" for c in cfgs})
    data = sorted(
        {
            f"{c['dataset']['name']} / {c['dataset']['split']} ({c['dataset']['kind']}, n = {c['dataset']['n']})"
            for c in cfgs
        }
    )
    vers = {json.dumps(v, sort_keys=True) for v in raw["versions"] if isinstance(v, dict) and v}
    dev = [d if isinstance(d, dict) else {} for d in raw["device"]]  # NULL in stores written before it was recorded
    devices = sorted({d.get("device", "?") + (f" ({d['gpu']})" if d.get("gpu") else "") for d in dev})
    commits = sorted({c for c in raw["git_commit"] if isinstance(c, str) and c})
    return (
        "<h3>Protocols, budgets, data</h3><ul>"
        f"<li>directions: {', '.join(_e(f'{d} — {protocol_of(d)}') for d in dirs)}</li>"
        f"<li>ε (L∞, /255): {', '.join(f'{e:g}' for e in eps)}</li>"
        f"<li>data: {'; '.join(_e(d) for d in data)}; photos (independent units): "
        f"{_e(_photos(raw))}</li>"
        f"<li>seeds: {_e(sorted({int(s) for s in raw['seed']}))}; profiles: {_e(sorted(set(raw['profile'])))}</li>"
        f"<li>device: {_e(', '.join(devices))}</li>"
        f"<li>versions: {'; '.join('<code>' + _e(v) + '</code>' for v in sorted(vers))}</li>"
        f"<li>git commit(s): {_e(', '.join(commits) or 'unknown')}</li></ul></section>"
    )


def _photos(raw) -> str:
    n = sorted(
        {(c.get("dataset") or {}).get("photos") for c in raw["config"] if (c.get("dataset") or {}).get("photos")}
    )
    return ", ".join(map(str, n)) if n else "recorded per item (source column)"


# --------------------------------------------------------------------------------------------
# the leaderboard


def _board_row(r: dict, stats: dict, ir, certified: list[dict]) -> tuple[dict, dict[str, tuple[Any, str]]]:
    """One leaderboard row (a record) marked unreliable or not, and its cells: column key →
    (sort value, html)."""
    from robench.results.labels import defense_label

    vals: dict[str, tuple[Any, str]] = {}  # key → (sort value, html)
    pairs = [e for e in r["evaluations"] if e["dataset"]["kind"] == "pairs"]
    if pairs:
        e0 = pairs[0]
        st = stats.get(e0["cell_key"], {})
        vals["clean"] = (e0["clean"]["value"], _with_ci(e0["clean"]))
        plcc = (st.get("clean") or {}).get("plcc")
        vals["plcc"] = (plcc, _num(plcc))
    worst: dict[str, float] = {}
    worst_labels: dict[str, list[str]] = {}  # the flags of the evaluation each worst case comes from
    for e in r["evaluations"]:
        kind = "SROCC" if e["dataset"]["kind"] == "pairs" else "2AFC"
        short = (
            "ranking" if e["direction"] == "mos-split" else ("inflation" if e["direction"] == "up" else e["direction"])
        )
        for a in e["attacked"]:
            key = f"{kind}|{short}|{e['attack']}|{a['eps']:g}"
            shown = FL.labels(e["flag_details"])
            vals[key] = (a["value"], _with_ci(a) + "".join(_badge(f) for f in shown))
            # a masked gradient never ranks a row: what the attack failed to move is not robustness
            masked = "mask" in e["flags"]
            if kind == "SROCC" and not masked and a["value"] is not None and a["value"] < worst.get(short, np.inf):
                worst[short], worst_labels[short] = a["value"], list(shown)
        if kind == "2AFC":
            st = stats.get(e["cell_key"], {})
            vals[f"2AFC|clean|{e['attack']}"] = (e["clean"]["value"], _with_ci(e["clean"]))
            for d in st.get("attacked") or []:
                if d.get("flip_rate") is not None:
                    vals[f"flips|{e['attack']}|{d['eps']:g}"] = (d["flip_rate"], _num(d["flip_rate"]))
    for short, v in worst.items():
        vals[f"worst|{short}"] = (v, f"<b>{_num(v)}</b>" + "".join(_badge(f) for f in worst_labels[short]))
    # the row is ranked by its worst case under the ranking attack (else its first protocol's):
    # unreliable only when that figure comes from a flagged evaluation, or when there is none
    ranked = "ranking" if "ranking" in worst else next(iter(worst), None)
    r = {**r, "unreliable": bool(worst_labels.get(ranked)) if ranked else bool(r["flags"])}
    if ir is not None:
        for idx, row in ir.df.iterrows():
            if idx[0] == r["model"]["arch"] and idx[-2] == defense_label(r["defense"]["name"]):
                col = [c for c in ir.df.columns if str(c).startswith("IR (")][0]
                vals[f"IR|{idx[-1]}"] = (
                    row[col],
                    f"{_num(row[col])} [{_num(row['CI low'])}, {_num(row['CI high'])}]",
                )
    for c in certified:
        if (
            c["target"] == r["model"]["target"]
            and c["defense"] == r["defense"]["name"]
            and c["median_width_mos"] is not None
        ):
            vals[f"cert|{c['radius']:g}"] = (c["median_width_mos"], _num(c["median_width_mos"]))
    return r, vals


def leaderboard(records: list[dict], cells_json: list[dict], tables: list, certified: list[dict]) -> str:
    """One row per target × defence (records), columns: clean SROCC/PLCC, the metric under each
    protocol × attack × ε with its interval, the worst case per protocol, IR-Score, 2AFC and flip
    rate, certified width; flag badges; unreliable rows marked."""

    stats = {c["key"]: c for c in cells_json}
    ir = next((t for t in tables if t.name == "ir"), None)
    cols: list[tuple[str, str]] = []  # (key, header)
    rows = []
    for r in records:
        r, vals = _board_row(r, stats, ir, certified)
        for k in vals:
            if k not in [c[0] for c in cols]:
                cols.append((k, k))
        rows.append((r, vals))
    cols.sort(key=lambda c: (_colrank(c[0]), c[0].replace("|ranking", "|0").replace("|inflation", "|1")))
    head = "".join(
        f"<th data-col='{i}' title='click to sort'>{_header(k)}</th>"
        for i, (k, _) in enumerate([("target", ""), ("defence", ""), ("flags", "")] + cols)
    )
    body = []
    default_key = next(
        (k for k, _ in cols if k == "worst|ranking"), next((k for k, _ in cols if k.startswith("worst|")), None)
    )
    for r, vals in rows:
        flags = r["flags"]
        tr = [
            f"<td data-v='{_e(r['model']['target'])}'>{_e(r['model']['target'])}</td>",
            f"<td data-v='{_e(r['defense']['name'])}'>{_e(r['defense']['name'])}</td>",
            f"<td data-v='{len(flags)}'>"
            + (
                "".join(_badge(f) for f in flags)
                + (" <span class='unreliable'>unreliable</span>" if r["unreliable"] else "")
            )
            + "</td>",
        ]
        for k, _ in cols:
            v, h = vals.get(k, (None, "—"))
            sv = "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.6f}"
            tr.append(f"<td data-v='{sv}'>{h}</td>")
        cls = " class='flagged'" if r["unreliable"] else ""
        body.append(f"<tr{cls}>" + "".join(tr) + "</tr>")
    default = 3 + [k for k, _ in cols].index(default_key) if default_key else -1
    legend = "".join(f"<li>{_badge(code)} {_e(text)}</li>" for code, text in FL.LEGEND.items())
    return (
        f"<section id='leaderboard'><h2>Leaderboard</h2><p>One row per target × defence. SROCC vs MOS (2AFC "
        f"accuracy on 2AFC data) clean and under each attack, protocol (<i>ranking</i>: the ranking attack, "
        f"mos-split; <i>inflation</i>: score inflation, up) and ε (/255), with 95 % bootstrap intervals (photo "
        f"bootstrap where the items come from ≥ 10 photos, else item, as each record says); <i>worst</i>: the "
        f"lowest SROCC over the row's attacks and ε per protocol; IR: IR-Score vs the base row per attack with "
        f"its interval; flip: 2AFC decision-flip rate; cert: median certified interval width (MOS) per L2 radius. "
        f"Click a header to sort; default order: worst case under the ranking attack, most robust first. A flagged "
        f"value carries its flag codes; a row is marked <span class='unreliable'>unreliable</span> only when "
        f"the figure it is ranked by (its worst case) comes from a flagged evaluation; a gradient attack on a "
        f"target that masks its gradient ([mask]) gives no worst case.</p>"
        f"<div class='scroll'><table id='leaderboard-table' class='sortable' data-default='{default}'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        f"<details><summary>Flag legend</summary><ul class='legend'>{legend}</ul></details></section>"
    )


def _colrank(k: str) -> int:
    head = k.split("|")[0]
    return {"clean": 0, "plcc": 1, "worst": 2, "SROCC": 3, "IR": 4, "2AFC": 5, "flips": 6, "cert": 7}.get(head, 8)


def _header(k: str) -> str:
    if k in ("target", "defence", "flags"):
        return k
    if k == "clean":
        return "clean SROCC"
    if k == "plcc":
        return "clean PLCC"
    parts = k.split("|")
    if parts[0] == "worst":
        return f"worst ({parts[1]})"
    if parts[0] in ("SROCC", "2AFC") and len(parts) == 4:
        return f"{parts[0]} {parts[1]}<br>{_e(parts[2])} {parts[3]}"
    if parts[0] == "2AFC":
        return f"2AFC clean<br>({_e(parts[2])} cell)"
    if parts[0] == "IR":
        return f"IR {_e(parts[1])}"
    if parts[0] == "flips":
        return f"flip rate {_e(parts[1])} {parts[2]}"
    if parts[0] == "cert":
        return f"cert. width R {parts[1]}"
    return _e(k)


def _with_ci(v: dict) -> str:
    ci = v.get("ci")
    return _num(v.get("value")) + (f" <span class='ci'>[{_num(ci[0])}, {_num(ci[1])}]</span>" if ci else "")


def _badge(label: str) -> str:
    """A flag label (``nc``, or ``nc 0.93`` with an attack's measured strength) with its legend."""
    return f"<span class='badge' title='{_e(FL.LEGEND.get(FL.code_of(label), label))}'>{_e(label)}</span>"


# --------------------------------------------------------------------------------------------
# tables, figures, gallery


def table_html(t) -> str:
    from robench.results.table import MARK_MD, _strings

    s = _strings(t, MARK_MD, "—")
    names = list(s.index.names) if hasattr(s.index, "names") else [s.index.name]
    cols = [" ".join(str(x) for x in c if x) if isinstance(c, tuple) else str(c) for c in s.columns]
    head = "".join(f"<th>{_e(n or '')}</th>" for n in names) + "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for idx, r in zip(s.index, s.to_numpy()):
        idx = idx if isinstance(idx, tuple) else (idx,)
        body.append(
            "<tr>" + "".join(f"<td>{_e(i)}</td>" for i in idx) + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>"
        )
    return (
        f"<div class='table'><h3 id='t-{_e(t.name)}'>{_e(t.title)}</h3><p class='caption'>{_e(t.caption)}</p>"
        f"<div class='scroll'><table class='plain'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
        f"</table></div><p class='foot'>{_e(t.footnote)}</p></div>"
    )


NO_GALLERY = (
    "<section id='gallery'><h2>Adversarial examples</h2><p>No kept images in this store (runs keep the "
    "4 most-moved items of each cell by default; <code>--no-gallery</code> keeps none, and the images "
    "folder beside the store is not committed).</p></section>"
)


def _mos_map(first, orient: float, kind: str) -> tuple[float | None, float | None]:
    """The least-squares map from a cell's clean oriented scores to MOS (slope, intercept); None
    without MOS, with fewer than 3 items or no spread."""
    if kind == "pairs" and first["mos"].notna().all() and len(first) > 2:
        q0 = orient * first["clean_score"].to_numpy(float)
        if np.ptp(q0) > 0:
            a, b = np.polyfit(q0, first["mos"].to_numpy(float), 1)
            return a, b
    return None, None


def gallery(model, per_cell: int = GALLERY_PER_CELL) -> tuple[str, int]:
    """The kept items (engine.images, "top") of every cell at its largest ε: reference, distorted,
    adversarial, perturbation ×(0.5/ε) around grey, scores before/after (oriented q, and MOS units
    by the least-squares map of the cell's clean scores), PSNR/SSIM of the change."""
    from robench.engine.images import images_folder, load_image
    from robench.core.errors import RobenchError

    folder = images_folder(model.store)
    out, n_img = [], 0
    for _, c in model.raw.iterrows():
        res = model.rows.get(c["key"])
        if res is None or "dist_image" not in res or res["dist_image"].isna().all():
            continue
        cfg = c["config"]
        e_max = float(res["eps"].max())
        top = res[(res["eps"] == e_max) & res["dist_image"].notna() & res["image"].notna()]
        orient = -1.0 if cfg["target"]["lower_better"] else 1.0
        a, b = _mos_map(res[res["eps"] == e_max].sort_values("item"), orient, cfg["dataset"]["kind"])
        top = top.assign(move=(orient * (top["score"] - top["clean_score"])).abs()).sort_values("move", ascending=False)
        figs = []
        for _, r in top.head(per_cell).iterrows():
            try:
                ref, dist, adv = (load_image(folder, r[k]).numpy() for k in ("ref_image", "dist_image", "image"))
            except RobenchError:
                continue  # images moved or deleted: the cell shows no gallery
            pert = np.clip(0.5 + (adv - dist) * (0.5 / (e_max / 255)), 0, 1)
            q0, q1 = orient * r["clean_score"], orient * r["score"]
            mos = f"; MOS units {a * q0 + b:.2f} → {a * q1 + b:.2f}" if a is not None else ""
            psnr = "∞" if r["psnr"] is None or not np.isfinite(r["psnr"]) else f"{r['psnr']:.1f} dB"
            ssim = "—" if r["ssim"] is None or not np.isfinite(r["ssim"]) else f"{r['ssim']:.3f}"
            imgs = "".join(
                f"<figure><img src='{_png(im)}' alt='{lab}'><figcaption>{lab}</figcaption></figure>"
                for im, lab in (
                    (ref, "reference"),
                    (dist, "distorted"),
                    (adv, "adversarial"),
                    (pert, f"δ × {0.5 / (e_max / 255):.0f} + ½"),
                )
            )
            n_img += 4
            figs.append(
                f"<div class='item'>{imgs}<p>item {_e(r['item_id'])} ({_e(r['distortion'])}, MOS "
                f"{_num(r['mos'], 2)}): q {q0:.3f} → {q1:.3f}{mos}; change PSNR {psnr}, SSIM {ssim}</p></div>"
            )
        if figs:
            d = cfg.get("direction") or "up"
            out.append(
                f"<div class='cell'><h4>{_e(c['target'])} · {_e(c['defense'])} · {_e(c['attack'])} · "
                f"{_e(d)} · ε {e_max:g}/255</h4>{''.join(figs)}</div>"
            )
    if not out:
        return NO_GALLERY, 0
    return (
        "<section id='gallery'><h2>Adversarial examples</h2><p>Per target · defence · attack · direction, the "
        f"items the attack moved most at the cell's largest ε (up to {per_cell}): the reference, the distorted image, "
        "the adversarial image and the perturbation amplified around grey; oriented quality q before → after, the "
        "same on the MOS scale by the least-squares map of the cell's clean scores, and the PSNR/SSIM of the "
        "adversarial against the distorted image.</p>" + "".join(out) + "</section>",
        n_img,
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:0 20px;color:#222}
h1{margin-top:18px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
nav a{margin-right:14px} code{font-size:12px;background:#f4f4f4;padding:1px 3px}
table{border-collapse:collapse;font-size:12.5px} th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f5f8;position:sticky;top:0} td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer} table.sortable th.asc::after{content:' ▲'} table.sortable th.desc::after{content:' ▼'}
.scroll{overflow-x:auto;max-width:100%} .ci{color:#777;font-size:11px}
.badge{display:inline-block;background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;margin-left:3px;font-size:10.5px}
.unreliable{background:#f5b041;color:#000;border-radius:3px;padding:0 4px;font-size:10.5px}
tr.flagged td{background:#fff8ec} .caption,.foot{color:#444;font-size:12.5px;max-width:1100px}
figure{display:inline-block;margin:4px;text-align:center} figure img{width:160px;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:11px;color:#555} .item{margin:6px 0 14px} .cell h4{margin:18px 0 2px}
.figs img{max-width:100%;border:1px solid #eee;margin:6px 0} ul.legend{columns:2}
#leaderboard-table td:nth-child(-n+3),#leaderboard-table th:nth-child(-n+3){text-align:left}
"""

JS = """
(function(){
 function val(td){var v=td.getAttribute('data-v');if(v===null||v==='')return null;var f=parseFloat(v);return isNaN(f)?v:f;}
 function sortBy(table,col,desc){
  var tb=table.tBodies[0],rows=Array.prototype.slice.call(tb.rows);
  rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
   if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
   if(typeof x==='number'&&typeof y==='number')return desc?y-x:x-y;
   return desc?String(y).localeCompare(String(x)):String(x).localeCompare(String(y));});
  rows.forEach(function(r){tb.appendChild(r);});
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.className=i===col?(desc?'desc':'asc'):'';});
 }
 window.robenchSort=sortBy;
 document.querySelectorAll('table.sortable').forEach(function(t){
  Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){
   th.addEventListener('click',function(){sortBy(t,i,th.className!=='desc');});});
  var d=parseInt(t.getAttribute('data-default'),10);if(d>=0)sortBy(t,d,true);
 });
 function selftest(){
  var t=document.getElementById('leaderboard-table'),out={};
  var names=function(){return Array.prototype.map.call(t.tBodies[0].rows,function(r){return r.cells[0].textContent+' | '+r.cells[1].textContent;});};
  out.rows=names();out.columns=t.tHead.rows[0].cells.length;out.sorted=[];
  for(var c=3;c<out.columns;c++){
   sortBy(t,c,false);var asc=names();sortBy(t,c,true);var desc=names();
   out.sorted.push({col:c,header:t.tHead.rows[0].cells[c].textContent,asc:asc,desc:desc});}
  var imgs=document.images;out.images=imgs.length;out.broken=[];
  for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0)out.broken.push(imgs[i].alt||i);}
  out.resources=performance.getEntriesByType('resource').map(function(e){return e.name.slice(0,80);});
  var pre=document.createElement('pre');pre.id='selftest-result';pre.textContent=JSON.stringify(out);document.body.appendChild(pre);
 }
 if(location.hash==='#selftest'){if(document.readyState==='complete')selftest();else window.addEventListener('load',selftest);}
})();
"""


def write_index(out_tmp: Path, model) -> Path:
    """Write ``index.html`` of ``model`` (a results.model.ResultsModel) into the report's
    (temporary) folder, beside the figures already drawn there."""
    store_path, report_json, weights, raw = model.store, model.document, model.weights, model.raw
    tables = model.tables
    records, certified = model.records(), model.certified
    figs = sorted((out_tmp / "plots").glob("*.png")) if (out_tmp / "plots").is_dir() else []
    gal, n_img = gallery(model)
    fig_html = "".join(
        f"<figure class='figs'><img src='{_file_uri(p)}' alt='{_e(p.stem)}'><figcaption>{_e(p.name)}"
        f"</figcaption></figure>"
        for p in figs
    )
    nav = (
        "<nav><a href='#setting'>Setting</a><a href='#leaderboard'>Leaderboard</a><a href='#tables'>Tables</a>"
        "<a href='#figures'>Figures</a><a href='#gallery'>Adversarial examples</a></nav>"
    )
    doc = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>robench report — {_e(store_path.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>robench report</h1><p>Store <code>{_e(store_path)}</code>. Every number is read from the store's "
        f"per-image rows; nothing is recomputed. Files beside this page: the Markdown/LaTeX tables and "
        f"report.json.</p>",
        nav,
        setting(raw, weights),
        leaderboard(records, report_json.get("cells", []), tables, certified),
        "<section id='tables'><h2>Tables</h2>" + "".join(table_html(t) for t in tables) + "</section>",
        "<section id='figures'><h2>Figures</h2>"
        + (fig_html or "<p>No figures (report written with --no-plots).</p>")
        + "</section>",
        gal,
    ]
    body = "\n".join(doc)
    size = len(body.encode())
    body += (
        f"<footer><p class='foot'>Self-contained: CSS, JavaScript and {len(figs)} figures + {n_img} gallery "
        f"images embedded ({size / 2**20:.1f} MiB); no request leaves this file.</p></footer>"
        f"<script>{JS}</script></body></html>"
    )
    path = out_tmp / "index.html"
    path.write_text(body)
    return path
