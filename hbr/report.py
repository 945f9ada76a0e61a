"""The QC report of a run (issue 6): one self-contained HTML page with a few PNGs beside it.

It shows where images went (the funnel of kept and removed images per stage and
background), what the landmarks look like on example images, the distributions of the
phenotypes, and which images have missing landmarks. Everything is linked relatively,
so the report folder can be copied or zipped and opened anywhere.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from hbr.files import remove_stale, write_bytes, write_png, write_text, write_tsv
from hbr.landmarks import HEAD, POINT_LANDMARKS
from hbr.masks import boxes_from_cells
from hbr.pipeline import BACKGROUNDS, DCM_TABLE, HBR_TABLE, SEGMENT_TABLE

EXAMPLES = 12
EXAMPLE_HEIGHT = 600  # example images are drawn at this height, whatever the scan size
MAX_LISTED = 200  # rows of the failed-landmark list shown in the page (all are in the TSV)

# BGR for OpenCV; the page's legend uses the same colours. Patient left and right differ
# in colour *and* marker shape (filled disc vs ring) so they stay apart in grey or for
# colour-blind readers.
HEAD_BGR = (0, 215, 255)  # yellow
LEFT_BGR = (40, 40, 230)  # red, filled disc
RIGHT_BGR = (230, 160, 0)  # blue, ring
OUTLINE_BGR = (20, 20, 20)

HISTOGRAMS = (
    ("LHR", "LHR (head length / height)"),
    ("WHR", "WHR (head width / height)"),
    ("Height_cm", "height (cm)"),
    ("head_length_cm", "head length (cm)"),
    ("head_width_cm", "head width (cm)"),
    ("shoulder_width_cm", "shoulder width (cm)"),
    ("hip_width_cm", "hip width (cm)"),
    ("trunk_length_cm", "trunk length (cm)"),
    ("leg_length_cm", "leg length (cm)"),
)
BACKGROUND_COLOURS = {"black": "#2b6cb0", "white": "#dd8a2e"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1150px; color: #1f2933; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.muted { color: #616e7c; } .small { font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; }
th { background: #f3f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { background: #e6f4ea; border: 1px solid #a8d5b5; padding: 8px 12px; border-radius: 6px; }
.warn { background: #fdecea; border: 1px solid #f1a7a0; padding: 8px 12px; border-radius: 6px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 1.5em; }
.grid { display: grid; grid-template-columns: repeat(6, 1fr); gap: 10px; }
.grid figure { margin: 0; text-align: center; font-size: 0.78em; word-break: break-all; }
.grid img { width: 100%; border: 1px solid #d0d7de; background: #888; }
.legend span { margin-right: 18px; white-space: nowrap; } .legend svg { vertical-align: middle; }
img.chart { max-width: 100%; border: 1px solid #eef0f2; }
"""


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _esc(value: object) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def html_table(frame: pd.DataFrame, numeric: Iterable[str] = ()) -> str:
    """A DataFrame as an escaped HTML table; `numeric` columns are right-aligned."""
    numeric = set(numeric)
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(
            f'<td class="num">{_esc(v)}</td>' if c in numeric else f"<td>{_esc(v)}</td>"
            for c, v in zip(frame.columns, row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def _figure_class():
    """matplotlib's Figure (no pyplot: no global state, safe in any backend), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def funnel_chart(funnel: pd.DataFrame, path: Path) -> bool:
    """Horizontal stacked bars of kept and removed images per stage that ran; False (no file) when none ran."""
    Figure = _figure_class()
    ran = funnel.dropna(subset=["seen"])
    if ran.empty or Figure is None:
        path.unlink(missing_ok=True)
        return False
    labels = [f"{s} {b}".strip() for s, b in zip(ran["stage"], ran["background"])]
    kept = ran["kept"].astype(float).to_numpy()
    removed = ran["removed"].fillna(0).astype(float).to_numpy()
    fig = Figure(figsize=(9, 0.42 * len(ran) + 1.2), dpi=90)
    ax = fig.subplots()
    y = np.arange(len(ran))[::-1]
    ax.barh(y, kept, color="#3c9d5d", label="kept")
    ax.barh(y, removed, left=kept, color="#d9534f", label="removed")
    for yi, k, r in zip(y, kept, removed):
        ax.text(k + r, yi, f"  {int(k)} / {int(r)}", va="center", fontsize=9, color="#333")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlabel("images (kept / removed)")
    ax.set_xlim(0, max(1.0, float((kept + removed).max())) * 1.18)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    _save_figure(fig, path)
    return True


def distributions_chart(measured: pd.DataFrame, path: Path) -> bool:
    """3x3 histograms of the ratios and body lengths, stacked by background; False (no file) without values."""
    Figure = _figure_class()
    if Figure is None or not any(
        column in measured and _num(measured[column]).notna().any() for column, _ in HISTOGRAMS
    ):
        path.unlink(missing_ok=True)  # an older run's chart would describe other data
        return False

    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 8.4), dpi=90)
    axes = fig.subplots(3, 3).ravel()
    for ax, (column, title) in zip(axes, HISTOGRAMS):
        values = _num(measured[column]) if column in measured else pd.Series(dtype=float)
        finite = values.dropna()
        ax.set_title(f"{title}\nn={len(finite)}" + (f", median {finite.median():.3g}" if len(finite) else ""), fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5))  # fewer, readable ticks
        if finite.empty:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#888")
            ax.set_yticks([])
            continue
        bins = np.histogram_bin_edges(finite, bins=min(30, max(5, len(finite) // 3)))
        parts = [(bak, colour, values[measured["background"] == bak].dropna()) for bak, colour in BACKGROUND_COLOURS.items()]
        parts = [p for p in parts if len(p[2])]
        if parts:  # stacked, so bar heights read as counts of all images
            ax.hist([p[2] for p in parts], bins=bins, stacked=True, color=[p[1] for p in parts],
                    label=[f"{p[0]} ({len(p[2])})" for p in parts])
            ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def _draw_outlined(draw, image, colour, thickness):
    """Draw twice, dark and wide then coloured, so marks show on black and white backgrounds."""
    draw(image, OUTLINE_BGR, thickness + 2)
    draw(image, colour, thickness)


def draw_landmarks(grey: np.ndarray, row: pd.Series, height: int = EXAMPLE_HEIGHT) -> np.ndarray:
    """Colour image of `grey` scaled to `height` rows, with the head box and the six landmark centres."""
    scale = height / grey.shape[0]
    width = max(1, round(grey.shape[1] * scale))
    colour = cv2.cvtColor(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
    boxes = boxes_from_cells(row)
    head = boxes.get(HEAD)
    if head is not None:
        # box edges enclose pixel indices x .. x+w-1; draw around them
        p1 = (round(head.x * scale), round(head.y * scale))
        p2 = (round((head.x + head.w) * scale), round((head.y + head.h) * scale))
        _draw_outlined(lambda im, c, t: cv2.rectangle(im, p1, p2, c, t, cv2.LINE_AA), colour, HEAD_BGR, 2)
    radius = max(4, round(height / 100))
    for name in POINT_LANDMARKS:
        box = boxes.get(name)
        if box is None:
            continue
        # pixel centres are at integer indices: +0.5 maps them onto the scaled grid
        centre = (round((box.cx + 0.5) * scale - 0.5), round((box.cy + 0.5) * scale - 0.5))
        if name.endswith("_left"):
            cv2.circle(colour, centre, radius + 1, OUTLINE_BGR, -1, cv2.LINE_AA)
            cv2.circle(colour, centre, radius, LEFT_BGR, -1, cv2.LINE_AA)
        else:
            _draw_outlined(lambda im, c, t: cv2.circle(im, centre, radius, c, t, cv2.LINE_AA), colour, RIGHT_BGR, 2)
    return colour


def pick_examples(measured: pd.DataFrame, n: int = EXAMPLES) -> pd.DataFrame:
    """Up to `n` measured images spread evenly over the sorted ids, complete ones first (deterministic)."""
    if measured.empty:
        return measured
    ordered = measured.sort_values("Image")
    complete = ordered[ordered["status"] == "ok"]
    pool = complete if len(complete) >= n else pd.concat([complete, ordered[ordered["status"] != "ok"]])
    positions = np.unique(np.linspace(0, len(pool) - 1, num=min(n, len(pool))).round().astype(int))
    return pool.iloc[positions]


def write_examples(examples: pd.DataFrame, image_dirs: Sequence[Path], out_dir: Path) -> list[tuple[str, pd.Series]]:
    """Draw the examples into out_dir (removing older ones); [(file name, row)] of those drawn.
    Each image is taken from the first of `image_dirs` that has it."""
    drawn = []
    for _, row in examples.iterrows():
        paths = (folder / f"{row['Image']}.png" for folder in image_dirs)
        path = next((p for p in paths if p.is_file()), None)
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path is not None else None
        if grey is None:
            continue  # the page says how many could not be drawn
        name = f"{row['Image']}.png"
        write_png(out_dir / name, draw_landmarks(grey, row))
        drawn.append((name, row))
    remove_stale(out_dir, {name for name, _ in drawn})
    return drawn


def _legend() -> str:
    def svg(shape: str) -> str:
        return f'<svg width="22" height="16">{shape}</svg>'

    head = svg('<rect x="3" y="2" width="16" height="12" fill="none" stroke="#ffd700" stroke-width="2.5"/>')
    left = svg('<circle cx="11" cy="8" r="6" fill="#e62828" stroke="#141414"/>')
    right = svg('<circle cx="11" cy="8" r="5" fill="none" stroke="#00a0e6" stroke-width="2.5"/>')
    return (
        '<p class="legend">'
        f"<span>{head} head box</span>"
        f"<span>{left} patient's left (shoulder, hip, ankle): filled red disc</span>"
        f"<span>{right} patient's right: blue ring</span></p>"
        '<p class="muted small">The patient\'s left is on the image\'s right (PatientOrientation L,F).</p>'
    )


def _stats(measured: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for column, title in HISTOGRAMS:
        for bak in BACKGROUND_COLOURS:
            values = _num(measured.loc[measured["background"] == bak, column]).dropna()
            if values.empty:
                continue
            q05, q50, q95 = values.quantile([0.05, 0.5, 0.95])
            rows.append({"phenotype": title, "background": bak, "n": len(values),
                         "median": f"{q50:.4g}", "5%": f"{q05:.4g}", "95%": f"{q95:.4g}"})
    return pd.DataFrame(rows, columns=["phenotype", "background", "n", "median", "5%", "95%"])


def _funnel_view(funnel: pd.DataFrame) -> pd.DataFrame:
    view = funnel.copy()
    for column in ("seen", "kept", "removed"):
        view[column] = [("" if pd.isna(v) else str(int(v))) for v in view[column]]
    return view[["stage", "background", "seen", "kept", "removed", "note"]]


def _links(result_dir: Path) -> str:
    names = [HBR_TABLE] + [SEGMENT_TABLE.format(bak=bak) for bak in BACKGROUNDS]
    found = [n for n in names if (result_dir / n).exists()]
    return " · ".join(f'<a href="../{n}">{n}</a>' for n in found)


def write_report(
    report_dir: str | Path,
    hbr_table: pd.DataFrame,
    funnel: pd.DataFrame,
    image_dirs: Sequence[str | Path],
    problems: Sequence[str] = (),
    n_examples: int = EXAMPLES,
) -> Path:
    """Write index.html, funnel.png, distributions.png, examples/*.png and failed_landmarks.tsv; return index.html.

    `hbr_table` is the whole-run table (text cells), `funnel` the per-stage counts of
    `hbr.ledger.funnel`, `image_dirs` the folders of the original PNGs (1_Total_Body_png; one per
    shard of a merged run),
    `problems` the accounting check's lines.
    """
    report_dir, image_dirs = Path(report_dir), [Path(folder) for folder in image_dirs]
    report_dir.mkdir(parents=True, exist_ok=True)
    measured = hbr_table[hbr_table["excluded_by"] == "none"]
    incomplete = measured[measured["status"] != "ok"]
    missing = measured["status"].str.contains("missing:", regex=False)

    has_funnel = funnel_chart(funnel, report_dir / "funnel.png")
    has_distributions = distributions_chart(measured, report_dir / "distributions.png")
    examples = pick_examples(measured, n_examples)
    drawn = write_examples(examples, image_dirs, report_dir / "examples")
    failed = incomplete.assign(_order=~incomplete["status"].str.contains("missing:", regex=False))
    failed = failed.sort_values(["_order", "Image"])[["Image", "background", "status"]]
    write_tsv(report_dir / "failed_landmarks.tsv", failed)

    outcome = pd.crosstab(hbr_table["excluded_by"], hbr_table["background"].replace("", "(none)"))
    outcome = outcome.reset_index().rename(columns={"excluded_by": "excluded by"})
    outcome.columns.name = None

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>hbr QC report</title><style>{STYLE}</style></head><body>",
        "<h1>hbr QC report</h1>",
        f"<p class='muted'>Tables: {_links(report_dir.parent)}</p>",
        "<div class='cards'>",
        f"<div class='card'><b>{len(hbr_table)}</b>Total Body images</div>",
        f"<div class='card'><b>{len(measured)}</b>measured</div>",
        f"<div class='card'><b>{int((~missing).sum())}</b>all landmarks found</div>",
        f"<div class='card'><b>{int(missing.sum())}</b>landmark missing</div>",
        f"<div class='card'><b>{int((hbr_table['excluded_by'] == 'not_measured').sum())}</b>not measured yet</div>",
        "</div>",
    ]
    if problems:
        items = "".join(f"<li>{_esc(p)}</li>" for p in problems)
        parts.append(f"<div class='warn'><b>Accounting problems: images may have been lost.</b><ul>{items}</ul></div>")
    else:
        parts.append(f"<div class='ok'>Accounting ok: every image of {DCM_TABLE} is in {HBR_TABLE} exactly once, "
                     "and each stage's kept images are the next stage's inputs.</div>")

    parts.append("<h2>Images kept and removed per stage</h2>")
    parts.append(html_table(_funnel_view(funnel), numeric=("seen", "kept", "removed")))
    if has_funnel:
        parts.append("<img class='chart' src='funnel.png' alt='kept and removed images per stage'>")
    parts.append(f"<h3>Where each image ended ({HBR_TABLE})</h3>")
    parts.append(html_table(outcome, numeric=[c for c in outcome.columns if c != "excluded by"]))

    parts.append(f"<h2>Example images ({len(drawn)})</h2>")
    parts.append(_legend())
    if len(drawn) < len(examples):
        parts.append(f"<p class='muted'>{len(examples) - len(drawn)} example(s) could not be drawn: "
                     f"original PNG missing in {_esc(image_dir.name)}/.</p>")
    if drawn:
        figures = []
        for name, row in drawn:
            lhr = _num(pd.Series([row.get("LHR", "")])).iloc[0]
            caption = f"{_esc(row['Image'])}<br>{_esc(row['background'])}" + (f", LHR {lhr:.3f}" if pd.notna(lhr) else "")
            if row["status"] != "ok":
                caption += f"<br><span style='color:#c0392b'>{_esc(row['status'])}</span>"
            figures.append(f"<figure><a href='examples/{_esc(name)}'><img src='examples/{_esc(name)}' "
                           f"alt='{_esc(row['Image'])}'></a><figcaption>{caption}</figcaption></figure>")
        parts.append(f"<div class='grid'>{''.join(figures)}</div>")
    else:
        parts.append("<p class='muted'>No measured images yet.</p>")

    parts.append("<h2>Phenotype distributions</h2>")
    parts.append("<p class='muted small'>Lengths scaled by the DICOM height (PatientSize); widths between landmark centres.</p>")
    if has_distributions:
        parts.append("<img class='chart' src='distributions.png' alt='histograms of ratios and body lengths'>")
    else:
        parts.append("<p class='muted'>" + ("No phenotypes yet." if _figure_class() else "Charts need matplotlib (pip install matplotlib).") + "</p>")
    stats = _stats(measured)
    if not stats.empty:
        parts.append(html_table(stats, numeric=("n", "median", "5%", "95%")))

    parts.append(f"<h2>Images with missing landmarks or other problems ({len(failed)})</h2>")
    if failed.empty:
        parts.append("<p>None: every measured image has all landmarks and a usable height.</p>")
    else:
        shown = failed.head(MAX_LISTED)
        more = f" (first {MAX_LISTED} shown)" if len(failed) > MAX_LISTED else ""
        parts.append(f"<p class='small'>All of them: <a href='failed_landmarks.tsv'>failed_landmarks.tsv</a>{more}.</p>")
        parts.append(html_table(shown))
    parts.append("</body></html>\n")

    index = report_dir / "index.html"
    write_text(index, "\n".join(parts))
    return index
