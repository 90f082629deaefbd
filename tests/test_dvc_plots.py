"""`dvc plots show` with the project's offline HTML template (.dvc/plots/offline.html) renders without a CDN.

The template inlines vega, vega-lite and vega-embed (built by tools/make_offline_plots_template.py). Here a
temp git+DVC project gets this repo's dvc.yaml, the template and the same `plots.html_template` config,
dvclive-style TSVs for the three plots dvc.yaml declares (training loss, validation loss, validation F1 and
exact match per epoch), and `dvc plots show`; the page is then loaded in the system's headless Chromium,
driven by Playwright, with every request to the network refused, and the DOM and a screenshot must show
every chart drawn.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
from conftest import REPO, dvc, make_project

TEMPLATE = REPO / ".dvc" / "plots" / "offline.html"
CONFIG_VALUE = "plots/offline.html"  # DVC joins a relative plots.html_template onto the .dvc/ directory
PLOT_IDS = {"training loss": "training_loss", "validation loss": "validation_loss",  # dvc.yaml id -> div id
            "validation F1 and exact match": "validation_F1_and_exact_match"}
LINE_RGB = (0x94, 0x5D, 0xD6)  # DVC's colour for the "workspace" revision
CDN_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)

TRAIN_LOSS = [f"{2.5 * 0.85**i + 0.0123:.4f}" for i in range(20)]
EVAL_LOSS = [f"{2.7 * 0.6**i + 0.0456:.4f}" for i in range(5)]
EVAL_F1 = [f"{80 - 50 * 0.6**i:.4f}" for i in range(5)]
EVAL_EXACT = [f"{70 - 55 * 0.6**i:.4f}" for i in range(5)]


def template_versions(html: str) -> dict[str, str]:
    """{"vega": "5.33.1", ...} from the /*! name version | ... */ headers the generator writes."""
    return dict(re.findall(r"/\*! (vega(?:-lite|-embed)?) (\d+\.\d+\.\d+) \| BSD-3-Clause", html))


@pytest.fixture(scope="module")
def plots_project(tmp_path_factory) -> Path:
    if not TEMPLATE.is_file():
        pytest.fail(f"{TEMPLATE} is missing: run tools/make_offline_plots_template.py (see its docstring)")
    root = make_project(tmp_path_factory.mktemp("plots") / "project", {})
    (root / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy2(TEMPLATE, root / ".dvc" / "plots" / "offline.html")
    dvc("config", "plots.html_template", CONFIG_VALUE, cwd=root)

    metrics = root / "dvclive" / "plots" / "metrics"
    (metrics / "eval").mkdir(parents=True)
    (metrics / "loss.tsv").write_text("step\tloss\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(TRAIN_LOSS)))
    for name, values in (("loss", EVAL_LOSS), ("f1", EVAL_F1), ("exact", EVAL_EXACT)):
        (metrics / "eval" / f"{name}.tsv").write_text(
            f"step\t{name}\n" + "".join(f"{5 * i}\t{v}\n" for i, v in enumerate(values)))
    dvc("plots", "show", "--out", "plots_out", cwd=root)
    return root


def test_repo_config_points_at_the_template():
    r = subprocess.run([sys.executable, "-m", "dvc", "config", "plots.html_template"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == CONFIG_VALUE
    assert Path(os.path.join(REPO / ".dvc", r.stdout.strip())).resolve() == TEMPLATE.resolve()
    # the plots declared in dvc.yaml are the ones this test feeds
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    declared = {name: sorted(spec["y"]) for item in plots for name, spec in item.items()}
    assert declared == {"training loss": ["dvclive/plots/metrics/loss.tsv"],
                        "validation loss": ["dvclive/plots/metrics/eval/loss.tsv"],
                        "validation F1 and exact match": ["dvclive/plots/metrics/eval/exact.tsv",
                                                          "dvclive/plots/metrics/eval/f1.tsv"]}


def test_template_is_self_contained():
    html = TEMPLATE.read_text(encoding="utf8")
    assert html.count("{plot_divs}") == 1
    assert "{scripts}" not in html, "DVC would put its CDN <script src=...> tags there"
    assert not CDN_SCRIPT.search(html)
    assert "sourceMappingURL" not in html
    versions = template_versions(html)
    assert set(versions) == {"vega", "vega-lite", "vega-embed"}
    assert versions["vega"].startswith("5.") and versions["vega-lite"].startswith("5.")
    assert versions["vega-embed"].startswith("6.")
    assert html.count("Redistribution and use in source and binary forms") == 3  # each library's BSD-3 text
    # load order: vega-lite and vega-embed need the `vega` global, vega-embed the `vegaLite` one
    starts = [html.index(f"/*! {name} ") for name in ("vega", "vega-lite", "vega-embed")]
    assert starts == sorted(starts)
    assert html.index("</head>") > starts[-1]


def test_plots_show_writes_offline_html(plots_project):
    index = plots_project / "plots_out" / "index.html"
    assert index.is_file()
    html = index.read_text(encoding="utf8")
    assert not CDN_SCRIPT.search(html), CDN_SCRIPT.search(html)
    assert "cdn.jsdelivr.net" not in html
    versions = template_versions(TEMPLATE.read_text(encoding="utf8"))
    assert f'="{versions["vega-embed"]}"' in html  # vega-embed's own version constant, i.e. the inlined code
    assert f't.version="{versions["vega"]}"' in html
    assert "vegaEmbed" in html
    assert '"$schema": "https://vega.github.io/schema/vega-lite/v5.json"' in html  # what DVC's renderer emits
    for div_id in PLOT_IDS.values():
        assert f'<div id = "{div_id}">' in html and f"vegaEmbed('#{div_id}', spec);" in html
    for value in TRAIN_LOSS + EVAL_LOSS:
        assert f'"loss": "{value}"' in html
    for name, values in (("f1", EVAL_F1), ("exact", EVAL_EXACT)):
        for value in values:
            assert f'"{name}": "{value}"' in html


def offline_page(browser, url: str):
    """A tab on `url` that can reach nothing on the network (what is not inlined fails to load)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, service_workers="block")
    context.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort("internetdisconnected"))
    page = context.new_page()
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return context, page


@pytest.mark.slow  # a browser; without one it skips, and fails under CI=true (conftest `chromium`)
def test_chromium_renders_every_plot_offline(browser, plots_project, tmp_path):
    from playwright.sync_api import expect

    context, page = offline_page(browser, (plots_project / "plots_out" / "index.html").as_uri())
    try:
        for div_id in PLOT_IDS.values():
            chart = page.locator(f"#{div_id}")
            expect(chart).to_have_class(re.compile(r"vega-embed"), timeout=30_000)  # vega-embed took it over
            expect(chart.locator("canvas.marks, svg.marks")).to_have_count(1)  # and drew the marks
        inline_calls = page.locator("script").evaluate_all(
            "ss => ss.filter(s => s.textContent.includes('vegaEmbed(')).length")
        assert inline_calls == 0  # each plot div's inline vegaEmbed call was replaced by its chart
        shot = tmp_path / "plots.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    width, height, rows = decode_png(data)
    assert width == 1200 and height >= 900
    clusters = line_colour_clusters(width, rows)
    assert len(clusters) >= 1 and sum(clusters) >= 150 * len(PLOT_IDS), clusters


@pytest.mark.slow
def test_default_page_is_blank_without_network(browser, plots_project, tmp_path):
    """Control: the same plots with DVC's stock page (CDN scripts) render nothing when the network is refused."""
    from dvc_render.html import PAGE_HTML

    stock = tmp_path / "stock.html"
    stock.write_text(PAGE_HTML, encoding="utf8")
    dvc("plots", "show", "--out", str(tmp_path / "stock_out"), "--html-template", str(stock), cwd=plots_project)
    html = (tmp_path / "stock_out" / "index.html").read_text(encoding="utf8")
    assert CDN_SCRIPT.search(html)
    context, page = offline_page(browser, (tmp_path / "stock_out" / "index.html").as_uri())
    try:
        for div_id in PLOT_IDS.values():
            assert page.locator(f"#{div_id}").count() == 1
            assert page.locator(f"#{div_id} .marks").count() == 0, f"#{div_id} rendered although the CDN was unreachable"
    finally:
        context.close()


def decode_png(data: bytes) -> tuple[int, int, list[bytearray]]:
    """Minimal PNG decoder (8-bit RGB/RGBA, not interlaced) -> width, height, unfiltered rows."""
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prev, rows = bytearray(stride), []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp] if i >= bpp else 0), prev[i], (prev[i - bpp] if i >= bpp else 0)
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return width, height, rows if bpp == 3 else [strip_alpha(r) for r in rows]


def strip_alpha(row: bytearray) -> bytearray:
    return bytearray(b for i, b in enumerate(row) if i % 4 != 3)


def line_colour_clusters(width: int, rows: list[bytearray], gap: int = 40) -> list[int]:
    """Pixel counts of LINE_RGB, grouped into horizontal clusters of columns separated by > `gap` px."""
    per_column = [0] * width
    for row in rows:
        for x in range(width):
            r, g, b = row[3 * x : 3 * x + 3]
            if abs(r - LINE_RGB[0]) <= 12 and abs(g - LINE_RGB[1]) <= 12 and abs(b - LINE_RGB[2]) <= 12:
                per_column[x] += 1
    clusters, last = [], None
    for x, count in enumerate(per_column):
        if count:
            if last is None or x - last > gap:
                clusters.append(0)
            clusters[-1] += count
            last = x
    return clusters


def load_generator():
    spec = importlib.util.spec_from_file_location("make_offline_plots_template",
                                                  REPO / "tools" / "make_offline_plots_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_inlines_in_order_with_licenses(tmp_path):
    gen = load_generator()
    npm = tmp_path / "npm"
    for name, build in gen.PACKAGES:
        pkg = npm / name / "package"
        (pkg / Path(build).parent).mkdir(parents=True)
        (pkg / "package.json").write_text(f'{{"name": "{name}", "version": "9.8.7", "license": "BSD-3-Clause"}}')
        (pkg / Path(build).parent / "package.json").write_text('{"type": "module"}')  # like vega-lite's build/
        if name != "vega":  # the vega tarball ships no LICENSE: the generator supplies upstream's
            (pkg / "LICENSE").write_text(f"Copyright {name}\n\nRedistribution and use in source and binary forms")
        (pkg / build).write_text(f'window.lib_{name.replace("-", "_")}="</script>";\n//# sourceMappingURL=x.map\n')
    out = tmp_path / "offline.html"
    assert gen.main([str(npm), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf8")
    assert template_versions(html) == {"vega": "9.8.7", "vega-lite": "9.8.7", "vega-embed": "9.8.7"}
    assert html.count("Redistribution and use in source and binary forms") == 3
    assert "University of Washington Interactive Data Lab" in html  # vega's fallback license text
    assert "sourceMappingURL" not in html and '"<\\/script>"' in html
    assert html.index("lib_vega=") < html.index("lib_vega_lite=") < html.index("lib_vega_embed=")
    assert html.count("{plot_divs}") == 1 and "{scripts}" not in html
