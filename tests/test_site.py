"""Browser test of the docs site: build it, serve it on 127.0.0.1, and check its pages in headless Chromium.

Needs the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver); the tests
skip when they are missing. Set LEGALKD_SITE to the folder of an already built site to skip the build (35 s
measured on two busy CPU cores). Screenshots go to `_site_screenshots/`.
"""
import functools, http.server, json, os, sys, threading, warnings
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT/"_site_screenshots"
LOCAL_SCHEMES = {"data", "about", "blob"}  # URLs that never leave the browser
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1600"]


def _skip_loudly(reason):
    "Skip with a banner on stderr and a warning, which pytest lists in its summary even without -rs."
    print(f"\n{'!' * 70}\nSKIPPED docs site browser test: {reason}\n{'!' * 70}", file=sys.stderr)
    warnings.warn(f"docs site browser test skipped: {reason}", UserWarning, stacklevel=2)
    pytest.skip(reason)


def _notebooks():
    from legalkd.docs import notebook_paths
    return notebook_paths(ROOT/"nbs")


def _results_files():
    return sorted(p for p in (ROOT/"results").glob("*.json") if json.loads(p.read_text()).get("kind") in ("teacher", "student", "compressed"))


def _page(notebook: str) -> str:
    from legalkd.docs import page_name
    return page_name(ROOT/"nbs"/notebook)


RESULTS_PAGES = ("01_teacher.ipynb", "03_distill.ipynb", "04_compress.ipynb")  # notebooks with `#| results` cells


def _page_tables(browser, url) -> list[list[list[str]]]:
    "Open `url` and return every table on it as rows of cell texts, header rows included."
    browser.get(url)
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('table')).map(t => Array.from(t.querySelectorAll('tr'))"
        ".map(r => Array.from(r.querySelectorAll('th, td')).map(c => c.textContent.trim())))")


def _shows(text: str, value: float) -> bool:
    "Tell whether a table cell's `text` is `value` (a score in [0, 1]) rounded to the cell's decimals, as a fraction or a percentage."
    try: displayed = float(text)
    except ValueError: return False
    decimals = len(text.partition(".")[2])
    half_unit = 0.5 * 10 ** -decimals + 1e-9
    return (decimals >= 2 and abs(displayed - value) <= half_unit) or (decimals >= 1 and abs(displayed - 100 * value) <= half_unit)


def _describe(tables) -> list[list[str]]:
    "Return the first row of each table, to show in a failure message."
    return [t[0] if t else [] for t in tables]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Path of the site: LEGALKD_SITE when set, else a fresh build in a temporary folder."
    if os.environ.get("LEGALKD_SITE"):
        path = Path(os.environ["LEGALKD_SITE"])
        assert (path/"index.html").exists(), f"LEGALKD_SITE={path} has no index.html; build it with `legalkd docs --out {path}`"
        return path
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _skip_loudly(f"{CHROMIUM} or {CHROMEDRIVER} not found; install them with `apt-get install -y chromium chromium-driver`")
    from legalkd.docs import build_docs
    report = build_docs(ROOT, tmp_path_factory.mktemp("docs")/"_site")
    print(f"docs build: {report['total_seconds']}s (nbdev {report['proc_seconds']}s, mkdocs {report['mkdocs_seconds']}s)")
    return report["site"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args): pass


@pytest.fixture(scope="module")
def server(site):
    "Base URL of a local HTTP server on 127.0.0.1 that serves the site."
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    "A headless Chromium driven by selenium, with performance logging on."
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _skip_loudly(f"{CHROMIUM} or {CHROMEDRIVER} not found; install them with `apt-get install -y chromium chromium-driver`")
    os.environ["SE_OFFLINE"] = "true"  # keep Selenium Manager from looking for drivers online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS: options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _requested_urls(driver) -> list[str]:
    "Drain the performance log and return the URLs of the requests the browser sent."
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent": urls.append(message["params"]["request"]["url"])
    return urls


def _leaves_host(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in LOCAL_SCHEMES and parsed.hostname != "127.0.0.1"


@pytest.fixture(scope="module")
def pages(browser, server):
    "Visit the home page and the pages with results; return, per page, the requests sent and the resources referenced."
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.get("about:blank")  # leave Chromium's start page, then drop what it logged
    _requested_urls(browser)
    visited = {}
    for name in ("index.html", "analysis.html", *map(_page, RESULTS_PAGES)):
        browser.get(urljoin(server, name))
        browser.execute_script("return document.readyState")
        browser.save_screenshot(str(SCREENSHOTS/f"{Path(name).stem}.png"))
        refs = browser.execute_script(
            "return Array.from(document.querySelectorAll('script[src], img[src], iframe[src], link[href]'))"
            ".map(e => e.src || e.href)")
        visited[name] = dict(requests=_requested_urls(browser), references=refs)
    return visited


def test_leaves_host_classifies_urls():
    assert not _leaves_host("http://127.0.0.1:8000/analysis.html")
    assert not _leaves_host("data:image/png;base64,AAAA")
    assert not _leaves_host("about:blank")
    assert _leaves_host("https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js")
    assert _leaves_host("http://localhost:8000/")  # another name for the host still counts as leaving 127.0.0.1
    assert _leaves_host("chrome://resources/js/util.js")


def test_home_page_renders(browser, server, pages):
    browser.get(urljoin(server, "index.html"))
    assert browser.title, "home page has no <title>"
    assert browser.find_elements("css selector", ".md-nav"), "home page has no material navigation"


def test_every_notebook_has_page(site, browser, server, pages):
    from legalkd.docs import page_name
    browser.get(urljoin(server, "index.html"))
    nav_links = {urlparse(a.get_attribute("href")).path.lstrip("/")
                 for a in browser.find_elements("css selector", "nav.md-nav a.md-nav__link[href]")}
    for nb in _notebooks():
        page = page_name(nb)
        assert (Path(site)/page).exists(), f"{nb.name} has no page {page} in {site}"
        assert page in nav_links or (page == "index.html" and "" in nav_links), f"{page} ({nb.name}) is missing from the navigation"


def test_no_request_leaves_localhost(pages):
    for name, seen in pages.items():
        assert seen["requests"], f"no requests were logged for {name}; is performance logging on?"
        external = [u for u in seen["requests"] if _leaves_host(u)]
        assert not external, f"{name} sent requests outside 127.0.0.1: {external}"


def test_no_external_references(pages):
    for name, seen in pages.items():
        external = [u for u in seen["references"] if u and _leaves_host(u)]
        assert not external, f"{name} references scripts, styles or images outside the site: {external}"


def test_analysis_page_shows_results(browser, server, pages):
    results = _results_files()
    if not results: pytest.skip(f"no results JSON in {ROOT/'results'} yet, so the analysis page has no table or figures")
    browser.get(urljoin(server, "analysis.html"))
    tables = browser.find_elements("css selector", "table#results-table")
    assert len(tables) == 1, f"expected one results table on analysis.html, found {len(tables)}"
    headers = [th.text for th in tables[0].find_elements("css selector", "th")]
    assert "strict micro F1" in headers, f"results table headers are {headers}"
    first_column = {row.find_elements("css selector", "td")[0].text for row in tables[0].find_elements("css selector", "tbody tr")}
    for path in results:
        assert path.stem in first_column, f"experiment {path.stem} ({path.name}) is missing from the results table"


def test_analysis_page_shows_figures(browser, server, pages):
    figures = sorted((ROOT/"results"/"figures").glob("*.png"))
    if not _results_files(): pytest.skip(f"no results JSON in {ROOT/'results'} yet, so no figures are drawn")
    assert figures, f"results exist but {ROOT/'results'/'figures'} has no PNG; the analysis notebook draws them"
    browser.get(urljoin(server, "analysis.html"))
    for path in figures:
        images = browser.find_elements("css selector", f"figure#figure-{path.stem} img")
        assert len(images) == 1, f"figure {path.name} is not on analysis.html"
        loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[0])
        assert loaded, f"figure {path.name} on analysis.html did not load"


def test_shows_matches_displayed_precision():
    assert _shows("0.8081", 0.8080939947780679)
    assert _shows("0.81", 0.8080939947780679)
    assert _shows("80.8", 0.8080939947780679)
    assert not _shows("0.8", 0.8080939947780679)  # one decimal is too coarse to tell a score apart
    assert not _shows("0.7737", 0.8080939947780679)
    assert not _shows("teacher", 0.8)


def test_teacher_page_shows_learning_curve(browser, server, pages):
    path = ROOT/"results"/"teacher.json"
    if not path.exists(): pytest.skip(f"{path} not found, so the teacher page has no results tables")
    teacher = json.loads(path.read_text(encoding="utf-8"))
    curve = [epoch["val_f1"] for epoch in teacher["history"]] or [teacher["test"]["f1"]]
    page = _page("01_teacher.ipynb")
    tables = _page_tables(browser, urljoin(server, page))
    cells = [{c for row in table for c in row} for table in tables]
    has_curve = [all(any(_shows(c, value) for c in table_cells) for value in curve) for table_cells in cells]
    assert any(has_curve), (f"no table on {page} shows the validation F1 per epoch of {path.name} ({curve}); "
                            f"tables found: {_describe(tables)}. "
                            "Is there a `#| results` cell in nbs/01_teacher.ipynb that displays the learning curve?")


def test_distill_page_lists_variants(browser, server, pages):
    from legalkd.results import load_results
    students = [r for r in load_results(ROOT/"results") if r.get("kind") == "student"] if (ROOT/"results").is_dir() else []
    if not students: pytest.skip(f"no student results in {ROOT/'results'} yet, so the distillation page has no variant table")
    page = _page("03_distill.ipynb")
    tables = _page_tables(browser, urljoin(server, page))

    def lists(table, result):
        "Tell whether a row of `table` names the experiment of `result` and shows its test F1."
        return any(result["experiment"] in row and any(_shows(c, result["test"]["f1"]) for c in row) for row in table)

    names = [r["experiment"] for r in students]
    complete = [t for t in tables if all(lists(t, r) for r in students)]
    assert complete, (f"no table on {page} has a row with the test F1 of each of {names}; tables found: {_describe(tables)}. "
                      "Is there a `#| results` cell in nbs/03_distill.ipynb that reads every student's results file?")


def test_compress_page_shows_bench(browser, server, pages):
    path = ROOT/"results"/"bench.json"
    if not path.exists(): pytest.skip(f"{path} not found, so the compression page has no benchmark table")
    models = list(json.loads(path.read_text(encoding="utf-8"))["models"])
    page = _page("04_compress.ipynb")
    tables = _page_tables(browser, urljoin(server, page))
    bench = [t for t in tables if t and "words/s" in t[0]]
    assert bench, f"no table on {page} has a words/s column; tables found: {_describe(tables)}"
    row_names = {row[0] for row in bench[0] if row}
    for name in models:
        assert name in row_names, f"model {name} of {path.name} is missing from the benchmark table on {page}"
