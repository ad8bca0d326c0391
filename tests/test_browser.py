"""The report in a real browser: headless Chromium opens report.html from disk.

The report itself has no script. To ask the browser whether every image
loaded, the test opens a copy of the page with a few lines appended that
write the count of broken images into the title once the page has loaded,
and reads the title back from Chromium's `--dump-dom`. Skipped, with the
reason, where Chromium is not installed (`.ci/run` installs Debian's
`chromium`).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from scalesweep.analysis.phenomena import load_phenomenon
from tests.test_report import build_report, synthetic_runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it with apt)")

PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !img.complete || img.naturalWidth === 0).length;
  document.title = `images broken=${broken} total=${images.length}`;
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def image_check(page: Path, work: Path) -> tuple[int, int]:
    """(broken, total) images of `page` as Chromium loads it from disk (file://)."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=work / "profile")
    found = re.search(r"<title>images broken=(\d+) total=(\d+)</title>", done.stdout)
    assert found, f"chromium did not run the probe (rc {done.returncode}): {done.stderr[-2000:]}"
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    runs = synthetic_runs(model_sizes=(8, 16, 32), data_sizes=(100, 400, 1600), seeds=2)
    phenomena = [load_phenomenon("grokking", overrides={"params": {"gap": 300}}), load_phenomenon("generalization_gap")]
    build_report(out, runs, phenomena)
    return out / "report.html"


def test_every_image_loads_from_disk(report_page, tmp_path):
    broken, total = image_check(report_page, tmp_path)
    assert total == 5  # 2 phenomena x 2 axes, and grokking's phase diagram
    assert broken == 0


def test_a_broken_image_fails_the_check(report_page, tmp_path):
    page = tmp_path / "report.html"
    html = report_page.read_text(encoding="utf-8")
    first = re.search(r"src='data:image/png;base64,[^']*'", html)
    page.write_text(html.replace(first[0], "src='data:image/png;base64,iVBORw0KGgo='", 1), encoding="utf-8")
    assert image_check(page, tmp_path) == (1, 5)


def test_screenshot_shows_the_report(report_page, tmp_path):
    shot = tmp_path / "report.png"
    done = chromium(
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        report_page.as_uri(),
        profile=tmp_path / "profile",
    )
    assert shot.is_file(), f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}"
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1280, 2400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 100  # text, coloured verdict rows and figures, not a blank page
    white = sum(count for count, rgb in colours or [] if rgb == (255, 255, 255))
    assert white < 0.95 * 1280 * 2400
