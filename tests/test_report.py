"""The review page (firmware_host/report.py, ``classify --report``), checked as HTML and in headless Chromium."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecell.cli import cli
from firmware_host.paths import OTHER_TYPES
from firmware_host.report import CSV_COLUMNS, OTHER, THUMB_MAX_PX, Box, ReportHeader, ReportWriter, cell_name, thumbnail_jpeg
from firmware_host.runtime import FLAG_REVIEW, FLAG_UNCERTAIN, TRIAGE_NOTE
from tests._browser import browser
from tests._tflite_fixtures import labelled_folder, save_jpeg

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
"""Screenshots the browser tests leave for a person to look at (build/ is not committed)."""

EVIL = "<img src=x onerror=alert(1)>.jpg"
TRICKY = [EVIL, "quote\"and'apostrophe.jpg", "space and </script><script>alert(2)</script>.jpg", "Blutausstrich-Zelle ß 血球.jpg", "a&amp;b.jpg"]


def _header(classes, **kw) -> ReportHeader:
    base = dict(classes=classes, model="export/model_int8.tflite", sha256="ab" * 32, precision="int8", edgecell_version="0.1.0", threshold=0.7, n_images=0)
    base.update(kw)
    return ReportHeader(**base)


def _thumb(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
    return thumbnail_jpeg(img)


def _page(tmp_path: Path, classes, cells, name="page.html", **kw) -> tuple[Path, ReportWriter]:
    """Write a page of ``cells`` = [(file, label, confidence, flag, true_label)] with synthetic thumbnails."""
    with ReportWriter(_header(classes, n_images=len(cells), **kw)) as w:
        for k, (f, label, conf, flag, truth) in enumerate(cells):
            w.add_cell(f, label, conf, flag, truth, _thumb(k))
        out = w.write(tmp_path / name)
    return out, w


SIX = ["basophil", "erythroblast", "monocyte", "myeloblast", "seg_neutrophil", OTHER]


def _mixed_cells():
    """20 cells over the six classes (none predicted as erythroblast), tricky names included, all labelled by folder."""
    cells = []
    plan = {"basophil": 3, "monocyte": 5, "myeloblast": 4, "seg_neutrophil": 6, OTHER: 2}
    k = 0
    for cls, n in plan.items():
        for j in range(n):
            conf = 0.5 + 0.05 * j
            flag = FLAG_UNCERTAIN if conf < 0.7 else (FLAG_REVIEW if cls == "myeloblast" else "")
            truth = cls if j % 3 else "monocyte"
            name = TRICKY[k] if k < len(TRICKY) else f"{cls}_{j}.jpg"
            cells.append((f"slide/{truth}/{name}", cls, conf, flag, truth))
            k += 1
    return cells


# ------------------------------------------------------------------------------------ the HTML itself


def test_page_is_self_contained_and_escapes_every_name(tmp_path):
    out, _ = _page(tmp_path, SIX, _mixed_cells())
    text = out.read_text(encoding="utf-8")
    # one file: nothing fetched from anywhere, a strict CSP, only data: images
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<link" not in text and "@import" not in text
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert "corrections stay on this device" in text.lower() and "embedded in this file" in text
    # the markup never contains a name's raw angle brackets or quotes: only escaped ones
    for name in TRICKY:
        assert html.escape(name) in text
        if re.search(r"[<>\"'&]", name):
            assert name not in text
    assert "<img src=x" not in text and "<script>alert(2)" not in text
    # exactly two scripts: the JSON data block and the page's own script
    assert len(re.findall(r"<script\b", text)) == 2 and len(re.findall(r"</script>", text)) == 2
    data = json.loads(re.search(r'<script type="application/json" id="edgecell-data">(.*?)</script>', text, re.S).group(1))
    assert data["classes"] == SIX
    assert [c[0] for c in data["cells"]] == [c[0] for c in _mixed_cells()]


def test_classes_come_from_the_model_and_other_is_always_offered(tmp_path):
    three = ["lymphocyte", "monocyte", "neutrophil"]
    cells = [("a.jpg", "lymphocyte", 0.9, "", None), ("b.jpg", "neutrophil", 0.4, FLAG_UNCERTAIN, None)]
    out, _ = _page(tmp_path, three, cells)
    text = out.read_text(encoding="utf-8")
    groups = re.findall(r'<section class="group" data-class="([^"]+)"', text)
    assert groups == three + [OTHER]
    assert text.count('<button type="button" class="cls"') == 2
    assert "basophil" not in text  # nothing from the default five
    assert 'id="confusion"' not in text  # no folder labels, no confusion matrix


def test_flagged_first_then_least_confident(tmp_path):
    cells = [
        ("sure.jpg", "monocyte", 0.99, "", None),
        ("unsure.jpg", "monocyte", 0.55, FLAG_UNCERTAIN, None),
        ("fair.jpg", "monocyte", 0.80, "", None),
        ("less-unsure.jpg", "monocyte", 0.65, FLAG_UNCERTAIN, None),
    ]
    out, _ = _page(tmp_path, SIX, cells)
    text = out.read_text(encoding="utf-8")
    group = text.split('data-class="monocyte"><h3>', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'class="name" title="([^"]+)"', group) == ["unsure.jpg", "less-unsure.jpg", "fair.jpg", "sure.jpg"]
    assert "2 flagged" in group


def test_confusion_matrix_and_wrong_ones_marked(tmp_path):
    cells = [("m/1.jpg", "monocyte", 0.9, "", "monocyte"), ("m/2.jpg", "basophil", 0.9, "", "monocyte"), ("x.jpg", "basophil", 0.9, "", None)]
    out, _ = _page(tmp_path, SIX, cells)
    text = out.read_text(encoding="utf-8")
    assert 'id="confusion"' in text and "2 cells sit in folders" in text
    assert text.count('class="cell wrong"') == 1 and "folder: monocyte" in text


def test_scan_mode_fields_with_boxes(tmp_path):
    rng = np.random.default_rng(0)
    field = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with ReportWriter(_header(SIX, n_images=1, mode="scan")) as w:
        fi = w.add_field("fields/f1.jpg", field)
        w.add_cell("fields/f1.jpg#1", "monocyte", 0.9, "", None, _thumb(1), field=fi, box=Box(10, 20, 60, 80))
        w.add_cell("fields/f1.jpg#2", OTHER, 0.8, "", None, _thumb(2), field=fi, box=Box(200, 100, 250, 150))
        text = "".join(w.render())
    assert 'id="fields"' in text and 'viewBox="0 0 400 300"' in text
    assert '<rect x="10" y="20" width="50" height="60"/>' in text and '<rect x="200" y="100" width="50" height="50"/>' in text
    assert "2 cells" in text


def test_scan_mode_cells_cut_by_the_border_are_shown_and_not_counted(tmp_path):
    """As scan's own summary: the page's differential (and its count after corrections) leaves them out."""
    import json
    import re

    field = np.zeros((300, 400, 3), dtype=np.uint8)
    with ReportWriter(_header(SIX, n_images=1, mode="scan")) as w:
        fi = w.add_field("fields/f1.jpg", field)
        w.add_cell("fields/f1.jpg#1", "monocyte", 0.9, "", None, _thumb(1), field=fi, box=Box(10, 20, 60, 80))
        w.add_cell("fields/f1.jpg#2", "monocyte", 0.8, "", None, _thumb(2), field=fi, box=Box(0, 100, 40, 150), edge=True)
        text = "".join(w.render())
    row = re.search(r'<tr data-class="monocyte">.*?</tr>', text).group(0)
    assert '<td class="num">1</td><td class="num">100.0</td>' in row
    assert "1 cell cut by a field's border shown below, not counted." in text and "cut by the border: not counted" in text
    data = json.loads(re.search(r'<script type="application/json" id="edgecell-data">(.*?)</script>', text, re.S).group(1))
    assert [c[2] for c in data["cells"]] == [0, 1]  # what the page's script skips when it counts again


def test_confirmed_cells_leave_out_those_cut_by_the_border_unless_corrected(tmp_path):
    """Ticking "also list the cells left as predicted" listed slivers cut by a field's border as confirmed cells, which
    adapt then learnt from (a review); an edge cell corrected by hand is still listed."""
    field = np.zeros((300, 400, 3), dtype=np.uint8)
    with ReportWriter(_header(SIX, n_images=1, mode="scan")) as w:
        fi = w.add_field("f1.jpg", field)
        w.add_cell("f1.jpg#10,20,60,80", "monocyte", 0.9, "", None, _thumb(1), field=fi, box=Box(10, 20, 60, 80))
        w.add_cell("f1.jpg#0,100,40,150", "monocyte", 0.8, "", None, _thumb(2), field=fi, box=Box(0, 100, 40, 150), edge=True)
        out = w.write(tmp_path / "s.html")
    with browser() as b:
        page = b.new_page(accept_downloads=True)
        page.goto(out.as_uri())
        page.check("#include-confirmed")
        with page.expect_download() as dl:
            page.click("#download")
        rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8"))))
        assert rows == [list(CSV_COLUMNS), ["f1.jpg#10,20,60,80", "monocyte", "monocyte", ""]]
        page.click('button.cls[data-i="1"]')
        page.click('.menu button.pick[data-class="basophil"]')
        with page.expect_download() as dl:
            page.click("#download")
        rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8"))))
        assert rows == [list(CSV_COLUMNS), ["f1.jpg#10,20,60,80", "monocyte", "monocyte", ""], ["f1.jpg#0,100,40,150", "monocyte", "basophil", ""]]


def test_failed_inputs_are_named_and_other_cells_show_their_nearest_class(tmp_path):
    with ReportWriter(
        _header(SIX, n_images=3, n_failed=2, failed=[("slide/broken.jpg", "cannot decode image (truncated)"), ("slide/<b>.jpg", "empty file")])
    ) as w:
        w.add_row({"path": "slide/a.jpg", "label": OTHER, "confidence": 0.01, "flag": "other", "other_reason": "unlike every trained type",
                   "top3": [{"label": "monocyte", "prob": 0.97}, {"label": "basophil", "prob": 0.02}, {"label": OTHER, "prob": 0.01}]})  # fmt: skip
        text = w.write(tmp_path / "p.html").read_text(encoding="utf-8")
    failed = text.split('<section id="failed">', 1)[1].split("</section>", 1)[0]
    assert "2 images that could not be classified" in failed and "broken.jpg</span>: cannot decode image (truncated)" in failed
    assert "&lt;b&gt;.jpg" in failed and "<b>.jpg" not in failed
    cell = text.split('<li class="cell', 1)[1].split("</li>", 1)[0]
    assert "nearest: monocyte 0.97" in cell and 'class="conf"' not in cell  # p(other) 0.01 is not shown as its confidence
    assert "names relative to" in text  # the CSV keeps relative names: apply must run from here


def test_an_empty_page_shares_nothing_and_a_field_of_one_cell_is_one_cell(tmp_path):
    out, _ = _page(tmp_path, SIX, [])
    assert '<td class="num">0</td><td class="num">-</td>' in out.read_text(encoding="utf-8")  # not "100.0" of nothing
    with ReportWriter(_header(SIX, n_images=1, mode="scan")) as w:
        k = w.add_field("f.jpg", np.full((60, 80, 3), 200, np.uint8))
        w.add_cell(cell_name("f.jpg", Box(1, 1, 30, 30)), "monocyte", 0.9, "", None, _thumb(0), field=k, box=Box(1, 1, 30, 30))
        assert "(80x60, 1 cell)" in w.write(tmp_path / "s.html").read_text(encoding="utf-8")


def test_possible_blasts_are_said_first_and_shown_first(tmp_path):
    """A blast among many cells must not be missed (a clinical review): a banner at the top of the page counts the possible
    blasts (a myeloblast, or a cell sent to other for the haematologist with myeloblast as the model's first choice),
    and the review classes' cells come before the rest."""
    cells = _mixed_cells()
    blasts = sum(c[1] == "myeloblast" for c in cells)
    with ReportWriter(_header(SIX, n_images=len(cells) + 2, review_classes=("erythroblast", "myeloblast"))) as w:
        for k, (f, label, conf, flag, truth) in enumerate(cells):
            w.add_cell(f, label, conf, flag, truth, _thumb(k))
        w.add_cell(
            "x/sent.jpg",
            OTHER,
            0.2,
            FLAG_REVIEW,
            None,
            _thumb(0),
            nearest=("myeloblast", 0.7),
            why="no whole stained nucleus",
            top3=[("myeloblast", 0.7), ("other", 0.2)],
        )
        w.add_cell(
            "x/ery.jpg",
            OTHER,
            0.2,
            FLAG_REVIEW,
            None,
            _thumb(0),
            nearest=("erythroblast", 0.7),
            why="no whole stained nucleus",
            top3=[("erythroblast", 0.7), ("other", 0.2)],
        )
        text = w.write(tmp_path / "p.html").read_text(encoding="utf-8")
    banner = re.search(r'<p class="alert" role="alert" id="possible-blasts">(.*?)</p>', text).group(1)
    assert f"Possible blast: {blasts + 1} cells</strong>" in banner and "1 of them sent to other" in banner
    assert text.index('id="possible-blasts"') < text.index('id="count"') < text.index('id="cells"')
    # the groups holding a possible blast (other holds one here), then the other review class
    assert re.findall(r'<section class="group" data-class="([^"]+)"', text)[:3] == ["myeloblast", "other", "erythroblast"]
    assert text.count('<span class="tag blast">possible blast</span>') == blasts + 1
    other = text.split('<section class="group" data-class="other">', 1)[1].split("</section>", 1)[0]
    assert other.index("sent.jpg") < other.index("ery.jpg")  # within a class, the possible blast first
    assert text.count('class="tag flag urgent"') == sum(c[3] == FLAG_REVIEW for c in cells) + 2
    assert TRIAGE_NOTE in text
    out, _ = _page(tmp_path, SIX, [c for c in cells if c[1] != "myeloblast"], name="none.html")
    assert 'id="possible-blasts"' not in out.read_text(encoding="utf-8")


def test_the_differential_is_of_the_white_cells(tmp_path):
    """An erythroblast (a nucleated red cell) is counted per 100 white cells, not among them; other stays among them,
    but for its cells with no stained nucleus (red cells, background: not white cells); the notes are the console's."""
    from firmware_host.runtime import OTHER_BY_NUCLEUS, OTHER_BY_SCORE, differential_notes

    labels = ["seg_neutrophil"] * 6 + ["other"] * 2 + ["erythroblast"] * 2
    with ReportWriter(_header(SIX, n_images=len(labels) + 3)) as w:
        for k, c in enumerate(labels):
            w.add_cell(f"s/{k}.jpg", c, 0.9, "", None, _thumb(k), why=OTHER_BY_SCORE if c == OTHER else "")
        for k in range(3):
            w.add_cell(f"s/bare{k}.jpg", OTHER, 0.2, "not one of the five - refer", None, _thumb(k), why=f"{OTHER_BY_SCORE}; {OTHER_BY_NUCLEUS}")
        page = w.write(tmp_path / "p.html")
    text = page.read_text(encoding="utf-8")
    assert re.search(r'<tr id="white-cells"><th scope="row">white cells</th><td class="num">8</td><td class="num">100.0</td>', text)
    ery = re.search(r'<tr data-class="erythroblast">.*?</tr>', text).group(0)
    assert "per 100 white cells" in ery and '<td class="num">2</td><td class="num">25.0</td>' in ery
    neutrophils = (
        '<tr data-class="seg_neutrophil"><th scope="row"><span class="swatch k4"></span>seg_neutrophil</th><td class="num">6</td><td class="num">75.0</td>'
    )
    assert neutrophils in text
    assert re.search(r'<tr data-class="other">.*?<td class="num">2</td><td class="num">25.0</td>', text)
    assert re.search(r'<tr id="no-nucleus">.*?not a white cell \(no stained nucleus found, or named platelet\): not counted</th><td class="num">3</td>', text)
    counts = {"basophil": 0, "erythroblast": 2, "monocyte": 0, "myeloblast": 0, "seg_neutrophil": 6, "other": 5}
    for note in differential_notes(counts, 3):  # one set of notes, the console's and the page's
        assert html.escape(note) in text, note
    assert [c[4] for c in _page_data(page)["cells"]] == [0] * len(labels) + [1] * 3
    none = _page(tmp_path, SIX, [(f"s/{k}.jpg", "seg_neutrophil", 0.9, "", None) for k in range(3)], name="n.html")[0].read_text(encoding="utf-8")
    assert "white cells the model does not name" not in none  # no other cell: nothing to say of other


def test_thumbnails_spool_and_size(tmp_path):
    from PIL import Image

    assert Image.open(io.BytesIO(thumbnail_jpeg(np.zeros((300, 200, 3), np.uint8)))).size == (THUMB_MAX_PX * 2 // 3, THUMB_MAX_PX)
    assert Image.open(io.BytesIO(thumbnail_jpeg(np.zeros((112, 112, 3), np.uint8)))).size == (112, 112)  # embedded as it is
    assert Image.open(io.BytesIO(thumbnail_jpeg(np.zeros((48, 48, 3), np.uint8)))).size == (48, 48)  # never enlarged


# ------------------------------------------------------------------------------------ in a real browser


def test_a_cell_without_a_nucleus_corrected_joins_the_white_cells_in_chromium(tmp_path):
    """The page's script counts as the page was written: a cell sent to other for want of a nucleus is not a white cell,
    until a person corrects it; the erythroblast's share follows the new white-cell count."""
    from firmware_host.runtime import OTHER_BY_NUCLEUS

    with ReportWriter(_header(SIX, n_images=4)) as w:
        for k, c in enumerate(["seg_neutrophil", "seg_neutrophil", "erythroblast"]):
            w.add_cell(f"s/{k}.jpg", c, 0.9, "", None, _thumb(k))
        w.add_cell("s/bare.jpg", OTHER, 0.2, "not one of the five - refer", None, _thumb(3), why=OTHER_BY_NUCLEUS)
        page = w.write(tmp_path / "p.html")
    with browser() as b:
        tab = b.new_page()
        problems = []
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.goto(page.as_uri())
        white, bare = tab.locator("#white-cells td.after"), tab.locator("#no-nucleus td.after")
        ery = tab.locator('#differential tr[data-class="erythroblast"] td.pct-after')
        assert (white.inner_text(), bare.inner_text(), ery.inner_text()) == ("2", "1", "50.0")
        tab.click('button.cls[data-i="3"]')
        tab.click('.menu button.pick[data-class="seg_neutrophil"]')
        assert (white.inner_text(), bare.inner_text(), ery.inner_text()) == ("3", "0", "33.3")
        assert tab.locator('svg.bars g[data-class="erythroblast"] text.n').text_content() == "1 (33.3 per 100 white cells)"
        # a cell a person names platelet is not a white cell either (a clinical review: it stayed among them)
        tab.click('button.cls[data-i="0"]')
        tab.click('.menu button.pick[data-class="platelet"]')
        assert (white.inner_text(), bare.inner_text(), ery.inner_text()) == ("2", "1", "50.0")
        assert problems == []


def test_page_in_headless_chromium(tmp_path):
    cells = _mixed_cells()
    out, _ = _page(tmp_path, SIX, cells)
    expected = {c: sum(1 for x in cells if x[1] == c) for c in SIX}
    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        problems, dialogs, requests = [], [], []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto(out.as_uri())
        page.wait_for_load_state("load")

        # thumbnails per class, as predicted
        for cls, n in expected.items():
            assert page.locator(f'section.group[data-class="{cls}"] li.cell img').count() == n, cls
        assert page.locator("li.cell").count() == len(cells)
        # the malicious names are text: no element came out of them, no script ran
        assert page.locator('img[src="x"]').count() == 0 and dialogs == []
        names = [c[0] for c in cells]
        for name in TRICKY:
            i = next(k for k, f in enumerate(names) if f.endswith("/" + name))
            shown = page.locator(f'li.cell[data-i="{i}"] .name')
            assert shown.inner_text() == names[i].removeprefix("slide/") and shown.get_attribute("title") == names[i]

        # nothing corrected: nothing to download
        assert page.locator("#download").is_disabled()
        # arrow keys pressed to scroll, after a click on a class, change nothing (they changed the class before)
        page.click('button.cls[data-i="2"]')
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Escape")
        assert page.locator("#ncorrected").inner_text() == "0 corrected" and page.locator("li.cell.corrected").count() == 0
        assert page.locator(".menu").count() == 0 and page.evaluate("document.activeElement.getAttribute('data-i')") == "2"
        page.click('button.cls[data-i="2"]')
        page.click("h1")  # a click elsewhere closes the menu, unchanged
        assert page.locator(".menu").count() == 0 and page.locator("#ncorrected").inner_text() == "0 corrected"
        page.click('button.cls[data-i="2"]')  # the keyboard: arrows move in the menu, Enter chooses
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        after_down = SIX[(SIX.index(cells[2][1]) + 1) % len(SIX)]
        assert page.locator('button.cls[data-i="2"]').inner_text() == after_down and page.locator("#ncorrected").inner_text() == "1 corrected"
        page.click('button.cls[data-i="2"]')
        page.click(f'.menu button.pick[data-class="{cells[2][1]}"]')  # and back
        assert page.locator("#ncorrected").inner_text() == "0 corrected" and page.locator("#download").is_disabled()

        # a click changes a cell's class; the page follows it
        target = f"slide/monocyte/{EVIL}"
        index = names.index(target)
        assert page.locator(".menu").count() == 0  # menus are made on demand
        assert page.locator(f'button.cls[data-i="{index}"]').inner_text() == "basophil"
        page.click(f'button.cls[data-i="{index}"]')
        menu = page.locator(".menu button.pick")
        assert menu.all_inner_texts() == [*SIX, *OTHER_TYPES[1:]] and page.locator('.menu [aria-checked="true"]').inner_text() == "basophil"
        page.click(f'.menu button.pick[data-class="{OTHER}"]')
        assert page.locator(f'button.cls[data-i="{index}"]').inner_text() == OTHER and page.locator(".menu").count() == 0
        assert page.locator(f'li.cell[data-i="{index}"]').get_attribute("class").split().count("corrected") == 1
        assert page.locator("#ncorrected").inner_text() == "1 corrected" and page.locator("#download").is_enabled()
        row = page.locator('#differential tr[data-class="other"]')
        assert int(row.locator("td.after").inner_text()) == expected[OTHER] + 1
        assert row.locator("td.pct-after").inner_text() == f"{100 * (expected[OTHER] + 1) / len(cells):.1f}"  # the share follows too
        bar = page.locator('svg.bars g[data-class="other"] text.n')
        assert bar.text_content().startswith(f"{expected[OTHER] + 1} (")  # and the bar chart
        # a cell corrected to erythroblast leaves the white cells: it is counted per 100 of them, and the shares follow
        ery, white = page.locator('#differential tr[data-class="erythroblast"]'), page.locator("#white-cells td.after")
        i = next(k for k, c in enumerate(cells) if c[1] == "seg_neutrophil" and k != index)
        page.click(f'button.cls[data-i="{i}"]')
        page.click('.menu button.pick[data-class="erythroblast"]')
        assert int(white.inner_text()) == len(cells) - 1 and int(ery.locator("td.after").inner_text()) == 1
        assert ery.locator("td.pct-after").inner_text() == f"{100 / (len(cells) - 1):.1f}"
        assert row.locator("td.pct-after").inner_text() == f"{100 * (expected[OTHER] + 1) / (len(cells) - 1):.1f}"
        assert page.locator('svg.bars g[data-class="erythroblast"] text.n').text_content() == f"1 ({100 / (len(cells) - 1):.1f} per 100 white cells)"
        page.click(f'button.cls[data-i="{i}"]')
        page.click(f'.menu button.pick[data-class="{cells[i][1]}"]')  # back
        assert int(white.inner_text()) == len(cells) and int(ery.locator("td.after").inner_text()) == 0
        # every class of the menu can be clicked, for a cell at any place in the window (a menu in the cell's card lost
        # its first classes: the card paints only inside itself)
        page.set_viewport_size({"width": 800, "height": 480})
        for i in (len(cells) - 1, 2):
            page.locator(f'button.cls[data-i="{i}"]').scroll_into_view_if_needed()
            for c in (SIX[0], OTHER_TYPES[-1]):  # the first and the last entry
                page.click(f'button.cls[data-i="{i}"]')
                page.click(f'.menu button.pick[data-class="{c}"]', timeout=3000)
            page.click(f'button.cls[data-i="{i}"]')
            page.click(f'.menu button.pick[data-class="{cells[i][1]}"]', timeout=3000)  # back as it was
        page.set_viewport_size({"width": 1280, "height": 900})
        assert page.locator("#ncorrected").inner_text() == "1 corrected"
        # a type named within other counts as other, and the CSV keeps the type (corrections apply makes its folder)
        typed = next(k for k, c in enumerate(cells) if c[1] == "monocyte")
        page.click(f'button.cls[data-i="{typed}"]')
        page.click('.menu button.pick[data-class="lymphocyte"]')
        assert int(row.locator("td.after").inner_text()) == expected[OTHER] + 2 and page.locator("#ncorrected").inner_text() == "2 corrected"
        page.click(f'button.cls[data-i="{typed}"]')
        page.click('.menu button.pick[data-class="monocyte"]')  # undone
        # a second change, then back: only the first counts
        assert index != 1
        page.click('button.cls[data-i="1"]')
        page.click('.menu button.pick[data-class="monocyte"]')
        page.click('button.cls[data-i="1"]')
        page.click(f'.menu button.pick[data-class="{cells[1][1]}"]')
        assert page.locator("#ncorrected").inner_text() == "1 corrected"

        with page.expect_download() as dl:
            page.click("#download")
        got = Path(dl.value.path()).read_text(encoding="utf-8")
        assert dl.value.suggested_filename == "corrections.csv"
        rows = list(csv.reader(io.StringIO(got)))
        assert rows == [list(CSV_COLUMNS), [target, "basophil", OTHER, ""]]

        page.check("#include-confirmed")
        with page.expect_download() as dl:
            page.click("#download")
        rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8"))))
        assert len(rows) == 1 + len(cells) and [target, "basophil", OTHER, ""] in rows and [cells[1][0], cells[1][1], cells[1][1], ""] in rows

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review_page.png"), full_page=True)
        assert (ARTIFACTS / "review_page.png").stat().st_size > 10_000
        assert problems == [] and requests == []


def test_leaving_the_page_asks_only_while_corrections_are_not_downloaded(tmp_path):
    out, _ = _page(tmp_path, SIX, _mixed_cells())
    with browser() as b:
        for download in (False, True):
            page = b.new_page(accept_downloads=True)
            asked = []
            page.on("dialog", lambda d, asked=asked: (asked.append(d.type), d.accept()))
            page.goto(out.as_uri())
            page.click('button.cls[data-i="0"]')
            page.click(f'.menu button.pick[data-class="{OTHER}"]')
            if download:
                with page.expect_download():
                    page.click("#download")
            page.goto("about:blank")  # leaving the page (the dialog, if any, is accepted)
            assert asked == ([] if download else ["beforeunload"]), download


# ------------------------------------------------------------------------------------ classify --report


def test_classify_report_end_to_end(models, tmp_path):
    data = labelled_folder(tmp_path / "data", per_class=3)
    save_jpeg(data / "monocyte" / EVIL, np.full((48, 48, 3), 120, np.uint8))
    report = tmp_path / "out" / "review.html"
    r = CliRunner().invoke(cli, ["classify", "--model", str(models.export), str(data), "--report", str(report), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    text = report.read_text(encoding="utf-8")
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert len(re.findall(r'<img alt="" width="\d+" height="\d+" decoding="async" src="data:image/jpeg;base64,', text)) == len(results) == 16
    for cls in models_classes(models):
        n = sum(1 for x in results if x["label"] == cls)
        group = text.split(f'<section class="group" data-class="{cls}">', 1)[1].split("</section>", 1)[0]
        assert group.count('<li class="cell') == n
    assert html.escape(EVIL) in text and "<img src=x" not in text
    assert "model_int8.tflite" in text and "int8" in text and json.loads((tmp_path / "r.json").read_text())["model"]["sha256"][:12] in text
    assert 'id="confusion"' in text  # the folders are named after classes
    f = json.loads((tmp_path / "r.json").read_text())["summary"]["flagged"]
    assert f"Flagged by the model: {f['total']} of {len(results)}</strong>: {f['review']} for the haematologist" in text  # as classify says
    assert f"{f['uncertain']} uncertain" in text and f"{f['other']} not one of the five" in text


def _page_data(page: Path) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="edgecell-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S).group(1))


def test_the_corrections_carry_each_files_sha256_and_a_replaced_file_is_refused(models, tmp_path, monkeypatch):
    """A camera that numbers its pictures from 1 again each day: a corrections CSV applied after the reviewed images
    were replaced under their names labelled other cells, unseen (a review). The page keeps each file's SHA-256 (in
    worker processes as in threads); the CSV carries it; apply refuses a file that is not the one reviewed."""
    import hashlib

    from edgecell.corrections import CorrectionsError, apply_corrections
    from firmware_host.report import SHA_SHOWN, short_sha
    from firmware_host.runtime import Classifier

    data = labelled_folder(tmp_path / "data", per_class=2)
    files = sorted(data.rglob("*.jpg"))
    clf = Classifier.load(models.int8, threads=1)
    for processes in (False, True):
        got = [p.sha256 for _, p in clf.classify_many(files, workers=2, processes=processes, thumbnails=THUMB_MAX_PX)]
        assert got == [hashlib.sha256(f.read_bytes()).hexdigest()[:SHA_SHOWN] for f in files], processes
    page = tmp_path / "p.html"
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["classify", "--model", str(models.export), "data", "--report", str(page)])
    assert r.exit_code == 0, r.output
    cells = _page_data(page)["cells"]
    assert {c[0]: c[3] for c in cells} == {os.path.relpath(f, tmp_path): short_sha(f.read_bytes()) for f in files}
    rows = [list(CSV_COLUMNS)] + [[c[0], c[1], OTHER, c[3]] for c in cells[:2]]  # as the page's script writes them
    (tmp_path / "c.csv").write_text("".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    assert apply_corrections(tmp_path / "c.csv", tmp_path / "out").n == 2
    reviewed = tmp_path / cells[1][0]
    save_jpeg(reviewed, np.full((48, 48, 3), 90, np.uint8))  # the next day's picture under the same name
    with pytest.raises(CorrectionsError) as exc:
        apply_corrections(tmp_path / "c.csv", tmp_path / "out2")
    assert exc.value.problems == [
        f"{tmp_path / 'c.csv'}: line 3: {cells[1][0]}: is not the image that was reviewed (SHA-256 {short_sha(reviewed.read_bytes())}..., "
        f"the page's {cells[1][3]}...): replaced since under the same name (a camera that numbers its pictures again?); review it again"
    ]
    # a CSV from a page made before the column: read as before, unchecked
    (tmp_path / "old.csv").write_text("file,predicted,corrected\n" + f"{cells[1][0]},{cells[1][1]},other\n", encoding="utf-8")
    assert apply_corrections(tmp_path / "old.csv", tmp_path / "out3").n == 1


def models_classes(models) -> list[str]:
    from firmware_host.metadata import read_metadata

    return list(read_metadata(models.int8).classes)


def test_thumbnails_same_from_worker_processes_and_threads(models, tmp_path):
    from firmware_host.runtime import Classifier

    data = labelled_folder(tmp_path / "data", per_class=2)
    files = sorted(data.rglob("*.jpg"))
    clf = Classifier.load(models.int8, threads=1)
    here = list(clf.classify_many(files, workers=2, processes=False, thumbnails=THUMB_MAX_PX))
    there = list(clf.classify_many(files, workers=2, processes=True, thumbnails=THUMB_MAX_PX))
    assert [p.thumbnail for _, p in here] == [p.thumbnail for _, p in there]
    assert all(p.thumbnail and p.thumbnail[:2] == b"\xff\xd8" for _, p in here)
    assert all(p.thumbnail is None for _, p in clf.classify_many(files[:2], workers=1))  # not asked: none made


def test_report_not_written_when_the_folder_cannot_be(models, tmp_path):
    data = labelled_folder(tmp_path / "data", per_class=1)
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(cli, ["classify", "--model", str(models.export), str(data), "--report", str(tmp_path / "file" / "r.html")])
    assert r.exit_code != 0 and "is a file, not a folder" in r.output and "Traceback" not in r.output


def test_the_header_names_the_run_of_an_exported_model(tmp_path):
    """A page of an adapted model and one of the original must say which is which, not both export/model_int8.tflite."""
    from firmware_host.report import header_for

    for run in ("cells", "clinic"):
        model = tmp_path / "runs" / run / "export" / "model_int8.tflite"
        facts = {"classes": ["a", "b"], "threshold": 0.5, "n_images": 3, "edgecell_version": "1.0"}
        assert header_for({"path": str(model)}, **facts).model == f"{run}/export/model_int8.tflite"
    assert header_for({"path": "/model.tflite"}, **facts).model == "model.tflite"
