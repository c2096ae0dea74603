"""`emo-slice map` end to end on two tiny models, and its explorer opened in a real headless browser.

The browser is the system's Chromium driven by Selenium through chromedriver (Debian: `apt-get install
chromium chromium-driver`; `.ci/run` installs them). Where neither can be found the browser tests are
skipped with the reason; everything else still runs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, invoke

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

HOSTILE = '</script><script>window.PWNED = 1</script><img src=x onerror="window.PWNED = 2"> & <b>bold</b>'
CLUSTERS = 4


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    from emo_slice.io.build import random_checkpoint

    root = tmp_path_factory.mktemp("map")
    a = random_checkpoint(root / "emo" / "final", "tiny", seed=0)
    b = random_checkpoint(root / "standard" / "final", "tiny", seed=1)
    rng = np.random.default_rng(0)
    words = {"code": "def return import class self".split(), "prose": "the cat sat on a mat".split()}
    words["math"] = "1 2 3 + = 4 *".split()
    lines = [json.dumps({"text": HOSTILE, "domain": "web"})]
    for domain, w in words.items():
        lines += [json.dumps({"text": " ".join(rng.choice(w, 30)), "domain": domain}) for _ in range(5)]
    docs = root / "docs.jsonl"
    docs.write_text("\n".join(lines) + "\n")
    out = root / "out"
    r = invoke("map", a, b, "--docs", docs, "--out", out, "--clusters", CLUSTERS, "--max-tokens-per-doc", 48,
               "--html-docs", 12, "--device", "cpu", "--json")  # fmt: skip
    assert r.returncode == 0, (r.stderr, r.exception)
    return out, json.loads(r.stdout), (a, b), docs


def test_map_writes_every_artifact_with_provenance(mapped):
    out, printed, models, _ = mapped
    assert [m["model"] for m in printed["models"]] == ["emo", "standard"]  # labels from the folders
    for name in ("index.html", "summary.json", "usage_map.png", "doc_spread.png", ".emo-slice"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "emo-slice-map" and s["provenance"]["emo_slice_version"]
    assert s["documents"]["domains"] == ["web", "code", "prose", "math"]
    for m, path in zip(s["models"], models):
        assert m["model"]["path"] == str(Path(path).resolve()) and m["model"]["fingerprint"]
        labels = np.load(out / m["label"] / "assignments.npy")
        assert len(labels) == m["tokens"] and sum(c["size"] for c in m["clusters"]) == m["tokens"]
        sizes = np.bincount(labels, minlength=CLUSTERS)
        assert [c["size"] for c in m["clusters"]] == sizes.tolist()
        assert sum(m["figures"]["spread_histogram"]) == s["documents"]["documents"]
    # the same documents and settings for both models
    assert s["models"][0]["tokens"] == s["models"][1]["tokens"]


def test_map_refuses_bad_input_in_one_line(mapped, tmp_path):
    out, _, (a, b), docs = mapped
    assert_one_line_error(invoke("map", a, "--docs", docs, "--out", tmp_path / "x", "--clusters", 1), "--clusters")
    assert_one_line_error(invoke("map", a, "--docs", tmp_path / "nope.jsonl", "--out", tmp_path / "y"), "no such file")
    assert_one_line_error(invoke("map", a, "--docs", docs, "--out", out), "--overwrite")  # exists, not replaced
    assert_one_line_error(invoke("map", a, a, "--docs", docs, "--out", tmp_path / "z"), "twice")
    assert_one_line_error(invoke("map", a, "--docs", docs, "--out", Path(a) / "m"), "input")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _browser():
    """A Selenium Chrome driver on the system Chromium, or skip (saying what is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no Chromium with chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def page(mapped):
    out = mapped[0]
    d = _browser()
    d.get((out / "index.html").as_uri())
    yield d, json.loads((out / "summary.json").read_text()), out
    d.quit()


def _visible(d, css):
    return [e for e in d.find_elements("css selector", css) if e.is_displayed()]


def _click(d, css):
    d.find_element("css selector", css).click()


def test_explorer_loads_offline_without_errors(page):
    d, s, out = page
    errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens with no network
    assert d.execute_script("return window.PWNED === undefined")  # a hostile document stays text
    rows = d.find_elements("css selector", "tr.headline-row")
    assert [r.find_element("css selector", "td").text for r in rows] == [m["label"] for m in s["models"]]


def test_explorer_tabs_show_the_clusters_and_documents_of_the_json(page):
    d, s, out = page
    for k, m in enumerate(s["models"]):
        _click(d, f'.model-tab[data-model="{k}"]')
        _click(d, '.view-tab[data-view="clusters"]')
        assert not d.find_element("id", "view-clusters").get_attribute("hidden")
        rows = _visible(d, ".cluster-row")
        got = {int(r.get_attribute("data-cluster")): r.find_element("css selector", ".cluster-size").text for r in rows}
        assert got == {c: f"{x['size']:,}" for c, x in enumerate(m["clusters"])}
        _click(d, '.view-tab[data-view="documents"]')
        assert d.find_element("id", "view-clusters").get_attribute("hidden")
        docs = _visible(d, ".doc-row")
        assert len(docs) == 12
        spread = {int(r.get_attribute("data-doc")): r.find_element("css selector", ".doc-spread").text for r in docs}
        assert spread == {i: f"{m['documents']['clusters_per_doc'][i]} cl." for i in spread}
    # one document under both models: every token coloured by the cluster assignments.npy gives it
    d.find_element("css selector", '.doc-row[data-doc="0"]').click()
    for k, m in enumerate(s["models"]):
        labels = np.load(out / m["label"] / "assignments.npy")
        offsets = np.load(out / m["label"] / "doc_offsets.npy")
        toks = d.find_elements("css selector", f'.doc-body[data-model="{k}"] span.tok')
        assert [int(t.get_attribute("data-cluster")) for t in toks] == labels[offsets[0] : offsets[1]].tolist()
    body = d.find_element("css selector", '.doc-body[data-model="0"]').text
    assert body.startswith("</script><script>window.PWNED = 1</script><img")  # shown as text, not run
    for view, css in (("tokens", "tr.token-row"), ("usage", "canvas.usage-canvas"), ("projection", "#proj-canvas")):
        _click(d, f'.view-tab[data-view="{view}"]')
        assert _visible(d, css), view
    assert len(_visible(d, "canvas.usage-canvas")) == 0  # the usage view is hidden again
    _click(d, '.view-tab[data-view="usage"]')
    assert len(_visible(d, "canvas.usage-canvas")) == len(s["models"])  # every model on one scale
    assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []
