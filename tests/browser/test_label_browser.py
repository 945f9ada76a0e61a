"""The labelling page in a real headless browser (Debian's chromium driven by playwright).

Run by `make test-browser` (which installs both), not by `make test`: it needs a system
package and starts a browser. It labels a few images with the keyboard, including an
undo and questions skipped by an earlier answer, and checks the label files written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hbr import pipeline
from hbr.files import write_png
from hbr.labelling import page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HEADER = "File_Name\tLabel\tFile_Name_npy\n"
TIMEOUT_MS = 20_000

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing: run scripts/install_browser.sh (or make test-browser)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: make test-browser installs it")


def label_file(labels: Path, number: int, bak=None) -> Path:
    return labels / pipeline.stage(number).label_names(bak)[0]


def rows(path: Path) -> str:
    return path.read_text()[len(HEADER):] if path.exists() else "(no file)"


@pytest.fixture
def served(tmp_path):
    """A work directory of four stage-1 images and the page's server on a free port."""
    workdir = tmp_path / "work"
    npy_dir, png_dir = pipeline.image_folders(workdir, pipeline.TOTAL_BODY)
    npy_dir.mkdir(parents=True)
    png_dir.mkdir()
    images = {"a_12": (0, 12), "b_11": (0, 11), "c_12": (252, 12), "d_12": (0, 12)}  # corner value, InstanceNumber
    for seed, (image_id, (corner, _)) in enumerate(images.items()):
        pixels = np.random.default_rng(seed).integers(0, 253, size=(120, 48), dtype=np.uint8)
        pixels[:12, :12] = corner
        np.save(npy_dir / f"{image_id}.npy", pixels)
        write_png(png_dir / f"{image_id}.png", pixels)
    (workdir / pipeline.DCM_TABLE).write_text(
        "Image\tInstanceNumber\n" + "".join(f"{i}\t{n}\n" for i, (_, n) in images.items()))
    labels = tmp_path / "labels"
    labels.mkdir()
    label_file(labels, 3).write_text(HEADER + "elsewhere_12\t1\telsewhere_12.npy\n")  # must stay as it is

    with page.running_server(page.build_session(workdir, labels, log=lambda line: None)) as url:
        yield url, labels


@pytest.fixture
def browser_page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.set_default_timeout(TIMEOUT_MS)
            yield tab
        finally:
            browser.close()


def active_question(tab) -> str:
    return tab.locator("#questions li.active").get_attribute("data-stage")


def test_label_with_the_keyboard(served, browser_page):
    url, labels = served
    tab = browser_page
    errors = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(url)
    tab.wait_for_selector("body[data-ready=true]")
    expect = sync_api.expect
    expect(tab.locator("#progress")).to_have_text("0 of 4 answered")
    expect(tab.locator("#image-id")).to_have_text("a_12")
    # the question in words, the suggestion from InstanceNumber, the image and the head zoom
    expect(tab.locator("#questions li").first).to_contain_text(pipeline.stage(2).question)
    expect(tab.locator("#questions li").first).to_contain_text("suggested: yes")
    tab.wait_for_function("document.getElementById('full').naturalWidth === 48")
    tab.wait_for_function("document.getElementById('head').height === 24")  # top fifth of 120 rows

    # a_12: accept "bone image", then "cut off" = yes removes it: 5 and 6 are skipped
    tab.keyboard.press("Enter")
    tab.keyboard.press("1")
    expect(tab.locator("#image-id")).to_have_text("b_11")
    tab.keyboard.press("k")  # back to look at a_12
    expect(tab.locator("#image-id")).to_have_text("a_12")
    expect(tab.locator('#questions li[data-stage="5"]')).to_have_attribute("data-state", "skipped")
    expect(tab.locator('#questions li[data-stage="6"]')).to_have_attribute("data-state", "skipped")
    tab.keyboard.press("j")
    # b_11: the suggestion is "no" (tissue image): accepting it skips every later question
    expect(tab.locator("#image-id")).to_have_text("b_11")
    tab.keyboard.press("Enter")
    # c_12 (white background): bone, not cut off, abnormal contrast (skips head pose)
    expect(tab.locator("#image-id")).to_have_text("c_12")
    for key in ("Enter", "0", "1"):
        tab.keyboard.press(key)
    # d_12: bone, not cut off, normal contrast, pose "yes" by mistake: undo, then "no"
    expect(tab.locator("#image-id")).to_have_text("d_12")
    for key in ("Enter", "0", "0", "1"):
        tab.keyboard.press(key)
    expect(tab.locator("#progress")).to_have_text("4 of 4 answered")
    tab.keyboard.press("u")
    expect(tab.locator("#progress")).to_have_text("3 of 4 answered")
    expect(tab.locator("#image-id")).to_have_text("d_12")
    assert active_question(tab) == "6"
    assert rows(label_file(labels, 6, "black")) == ""  # the undone row is gone again
    tab.keyboard.press("0")
    expect(tab.locator("#progress")).to_have_text("4 of 4 answered")
    # Backspace also undoes; the button answers as the key does
    tab.keyboard.press("Backspace")
    expect(tab.locator("#progress")).to_have_text("3 of 4 answered")
    tab.click("#btn-no")
    expect(tab.locator("#progress")).to_have_text("4 of 4 answered")
    tab.keyboard.press("ArrowLeft")
    expect(tab.locator("#image-id")).to_have_text("c_12")
    assert errors == []

    assert rows(label_file(labels, 2)) == "a_12\t1\ta_12.npy\nb_11\t0\tb_11.npy\nc_12\t1\tc_12.npy\nd_12\t1\td_12.npy\n"
    assert rows(label_file(labels, 3)) == ("elsewhere_12\t1\telsewhere_12.npy\na_12\t1\ta_12.npy\n"
                                           "c_12\t0\tc_12.npy\nd_12\t0\td_12.npy\n")
    assert rows(label_file(labels, 5, "black")) == "d_12\t0\td_12.npy\n"
    assert rows(label_file(labels, 5, "white")) == "c_12\t1\tc_12.npy\n"
    assert rows(label_file(labels, 6, "black")) == "d_12\t0\td_12.npy\n"
    assert rows(label_file(labels, 6, "white")) == "(no file)"
    backups = list(labels.glob("*.bak"))  # only the file that existed is backed up, once
    assert [b.name.split(".")[0] for b in backups] == [label_file(labels, 3).stem]
    assert backups[0].read_text() == HEADER + "elsewhere_12\t1\telsewhere_12.npy\n"

    # the download fallback serves the file as written
    with tab.expect_download() as info:
        tab.click(f"#files a:text('{label_file(labels, 3).name}')")
    assert Path(info.value.path()).read_text() == label_file(labels, 3).read_text()
