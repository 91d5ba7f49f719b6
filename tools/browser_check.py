"""Open every page of the built book in headless Chromium and check what a reader sees.

Usage: python tools/browser_check.py [--html _build/html] [--toc _toc.yml] [--chromium PATH]

The book in ``_build/html`` (``make book``) is served on 127.0.0.1 and every page listed in
``_toc.yml`` is loaded in Debian's Chromium through Playwright. For each page the check requires:

* no JavaScript exception, no console error and no failed request to the local server;
* every image served by the book decoded (``complete`` and ``naturalWidth > 0``), and, for a
  chapter, as many output areas and output figures as its stored notebook has visible outputs
  (a notebook stored unexecuted, or a figure dropped from ``_build/html``, fails here);
* for a chapter, an "Open in Colab" badge, and every Colab link on the page pointing at that very
  notebook in the repository named in ``_config.yml``;
* every math element typeset by MathJax, and no raw ``$$`` or ``$\\tex$`` left in the text.

It saves a full-page screenshot of each page as ``_build/screenshots/<page>.png``.

The machine that runs the check may be offline. MathJax, which the pages load from a CDN, is
served from a local copy of the npm package (fetched once with ``npm pack`` into
``_build/.cache``, SHA-256 verified); every other request that leaves 127.0.0.1 is aborted and
only counted (the Colab badge image, for instance): console errors caused by those aborted
requests are not held against the page.

Exit status: 0 when every page passes, 1 with a list of problems otherwise, 2 when the check
cannot run (no Chromium, no MathJax, no built book).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from build_results_table import toc_files  # tools/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]

# The URL Sphinx (>= 4) writes into every page with math: the default ``mathjax_path``.
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
MATHJAX_VERSION = "3.2.2"
# SHA-256 of the npm tarball mathjax-3.2.2.tgz (its registry shasum is
# c754d7b46a679d7f3fa03543d6b8bf124ddf9f6b, the same file).
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"

COLAB = "https://colab.research.google.com/github/{repo}/blob/{branch}/{path}"
HIDDEN_OUTPUT_TAGS = {"remove-cell", "remove_cell", "remove-output", "remove_output"}
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")


class CheckError(Exception):
    """The check cannot run (as opposed to a page that fails it)."""


# --------------------------------------------------------------------------- book metadata


def repository(config_path: Path) -> tuple[str, str]:
    """``("owner/name", branch)`` of the repository named in ``_config.yml``."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    url = config["repository"]["url"].rstrip("/")
    parts = urlsplit(url)
    if parts.netloc != "github.com" or parts.path.count("/") != 2:
        raise CheckError(
            f"_config.yml repository.url is not https://github.com/<owner>/<repo>: {url}"
        )
    return parts.path.strip("/"), config["repository"].get("branch", "main")


@dataclass
class Expected:
    """What a chapter page must show, from its stored notebook."""

    notebook: str  # path relative to the repository, e.g. "book/01_background.ipynb"
    output_cells: int  # visible code cells with at least one output
    figures: int  # image outputs in those cells
    unexecuted: int  # code cells without an execution count


def expected_from_notebook(path: Path) -> Expected:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    output_cells = figures = unexecuted = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        if cell.get("execution_count") is None and "".join(cell["source"]).strip():
            unexecuted += 1
        tags = set(cell.get("metadata", {}).get("tags", []))
        outputs = cell.get("outputs", [])
        if tags & HIDDEN_OUTPUT_TAGS or not outputs:
            continue
        output_cells += 1
        figures += sum(
            1 for out in outputs if any(mime in out.get("data", {}) for mime in IMAGE_MIMES)
        )
    return Expected(str(path.relative_to(REPO)), output_cells, figures, unexecuted)


# --------------------------------------------------------------------------- MathJax, Chromium


def local_mathjax(cache: Path) -> Path:
    """The ``package`` directory of the MathJax npm tarball, fetched and verified if needed."""
    tarball = cache / f"mathjax-{MATHJAX_VERSION}.tgz"
    unpacked = cache / f"mathjax-{MATHJAX_VERSION}"
    if (unpacked / "package" / "es5" / "tex-mml-chtml.js").is_file():
        return unpacked / "package"
    cache.mkdir(parents=True, exist_ok=True)
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise CheckError(
                "MathJax is needed offline and npm is not installed: install Node.js/npm, or put "
                f"mathjax-{MATHJAX_VERSION}.tgz (npm pack mathjax@{MATHJAX_VERSION}) into {cache}"
            )
        print(f"fetching MathJax {MATHJAX_VERSION}: npm pack mathjax@{MATHJAX_VERSION}", flush=True)
        run = subprocess.run(
            [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", str(cache)],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0 or not tarball.is_file():
            raise CheckError(
                f"npm pack mathjax@{MATHJAX_VERSION} failed (exit {run.returncode}); is the npm "
                f"registry reachable?\n{run.stderr.strip()[-2000:]}"
            )
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != MATHJAX_SHA256:
        tarball.unlink()
        raise CheckError(
            f"{tarball.name} has SHA-256 {digest}, expected {MATHJAX_SHA256}; the file was deleted "
            "(run the check again to fetch it anew)"
        )
    staging = cache / f"mathjax-{MATHJAX_VERSION}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise CheckError(f"{tarball.name}: refusing to unpack member {member.name!r}")
        archive.extractall(staging)  # noqa: S202 - members checked above
    shutil.rmtree(unpacked, ignore_errors=True)
    staging.rename(unpacked)
    return unpacked / "package"


def find_chromium(explicit: str | None) -> str:
    for candidate in (
        explicit,
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise CheckError(
        "Chromium not found: run `make chromium` (apt-get install chromium) or pass --chromium"
    )


# --------------------------------------------------------------------------- the local server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --------------------------------------------------------------------------- one page

PAGE_STATE_JS = """
async () => {
  const origin = location.origin;
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { img.loading = "eager"; });
  await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
  const local = imgs.filter((img) => img.currentSrc.startsWith(origin) || img.src.startsWith(origin));
  const brokenImages = local.filter((img) => !img.complete || img.naturalWidth === 0)
                            .map((img) => img.getAttribute("src"));
  const outputs = document.querySelectorAll("div.cell_output");
  const figures = Array.from(document.querySelectorAll("div.cell_output img"));
  const colabLinks = Array.from(document.querySelectorAll("a[href*='colab.research.google.com']"))
                          .map((a) => a.href);
  const badges = Array.from(document.querySelectorAll("article a[href*='colab.research.google.com']"))
                      .filter((a) => a.querySelector("img[alt='Open In Colab']"))
                      .map((a) => a.href);
  const math = Array.from(document.querySelectorAll(".math"));
  const untypeset = math.filter((m) => !m.querySelector("mjx-container")).length;
  const text = (() => {
    const clone = document.body.cloneNode(true);
    clone.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight")
         .forEach((e) => e.remove());
    return clone.textContent;
  })();
  const rawInline = text.match(/\\$[^$\\n]*\\\\[A-Za-z]+[^$\\n]*\\$/g) || [];
  return {
    brokenImages,
    outputs: outputs.length,
    figures: figures.length,
    brokenFigures: figures.filter((img) => !img.complete || img.naturalWidth === 0).length,
    colabLinks,
    badges,
    math: math.length,
    mjx: document.querySelectorAll("mjx-container").length,
    untypeset,
    rawDisplay: text.includes("$$"),
    rawInline: rawInline.slice(0, 3),
    mathjaxScripts: Array.from(document.scripts).map((s) => s.src).filter((s) => /mathjax/i.test(s)),
  };
}
"""


@dataclass
class PageResult:
    docname: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_page(
    context,
    base_url: str,
    html_dir: Path,
    docname: str,
    repo: str,
    branch: str,
    screenshot: Path,
    aborted: set[str],
    timeout_ms: int,
) -> PageResult:
    from playwright.sync_api import Error as PlaywrightError

    result = PageResult(docname)
    start = time.perf_counter()
    html_file = html_dir / f"{docname}.html"
    if not html_file.is_file():
        result.problems.append(
            f"{docname}.html does not exist: the page is in the toc but was not built"
        )
        return result
    notebook_path = REPO / f"{docname}.ipynb"
    expected = expected_from_notebook(notebook_path) if notebook_path.is_file() else None

    console_errors: list[tuple[str, str]] = []
    page_errors: list[str] = []
    failed_local: list[str] = []
    page = context.new_page()

    def on_console(message) -> None:
        if message.type == "error":
            console_errors.append((message.text, message.location.get("url", "")))

    def on_request_failed(request) -> None:
        if request.url.startswith(base_url):
            failed_local.append(f"{request.url} ({request.failure})")

    def on_response(response) -> None:
        if response.url.startswith(base_url) and response.status >= 400:
            failed_local.append(f"{response.url} (HTTP {response.status})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)
    try:
        page.goto(f"{base_url}/{docname}.html", wait_until="load", timeout=timeout_ms)
        has_math = page.evaluate("() => document.querySelectorAll('.math').length > 0")
        if has_math:
            try:
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=timeout_ms,
                )
                page.evaluate("() => MathJax.startup.promise.then(() => true)")
            except PlaywrightError as exc:
                result.problems.append(
                    f"MathJax did not start or finish: {str(exc).splitlines()[0]}"
                )
        state = page.evaluate(PAGE_STATE_JS)
        page.screenshot(path=str(screenshot), full_page=True)
    except PlaywrightError as exc:
        result.problems.append(f"the page could not be checked: {str(exc).splitlines()[0]}")
        result.problems += [f"JavaScript exception: {message}" for message in page_errors]
        return result
    finally:
        page.close()

    # Errors and failed requests.
    for message in page_errors:
        result.problems.append(f"JavaScript exception: {message}")
    offline = 0
    for text, url in console_errors:
        if url in aborted or any(blocked in text for blocked in aborted):
            offline += 1
        else:
            result.problems.append(f"console error: {text}" + (f" ({url})" if url else ""))
    for failure in failed_local:
        result.problems.append(f"failed request: {failure}")
    if offline:
        result.notes.append(f"{offline} console error(s) from aborted offline requests ignored")

    # Images.
    for src in state["brokenImages"]:
        result.problems.append(f"image not decoded (naturalWidth 0): {src}")

    # Outputs, figures and the Colab badge of a chapter.
    if expected is not None:
        if expected.unexecuted:
            result.problems.append(
                f"{expected.notebook}: {expected.unexecuted} code cell(s) stored unexecuted"
            )
        if expected.output_cells == 0:
            result.problems.append(f"no outputs: {expected.notebook} stores none (not executed?)")
        elif state["outputs"] != expected.output_cells:
            result.problems.append(
                f"{state['outputs']} output areas shown, {expected.output_cells} expected from "
                f"{expected.notebook}"
            )
        if state["figures"] != expected.figures:
            result.problems.append(
                f"{state['figures']} output figures shown, {expected.figures} expected from "
                f"{expected.notebook}"
            )
        if state["brokenFigures"]:
            result.problems.append(f"{state['brokenFigures']} output figure(s) not decoded")
        want = COLAB.format(repo=repo, branch=branch, path=f"{docname}.ipynb")
        if not state["badges"]:
            result.problems.append("no 'Open In Colab' badge in the page content")
        for href in sorted(set(state["colabLinks"])):
            if href != want:
                result.problems.append(f"Colab link {href} should be {want}")

    # Math.
    for src in state["mathjaxScripts"]:
        if not src.startswith(MATHJAX_CDN) and not src.startswith(base_url):
            result.problems.append(
                f"MathJax loaded from {src}, which this check cannot serve offline"
            )
    if state["untypeset"]:
        result.problems.append(
            f"{state['untypeset']} of {state['math']} math elements not typeset by MathJax"
        )
    if state["rawDisplay"]:
        result.problems.append("raw '$$' left in the page text (math not parsed)")
    for raw in state["rawInline"]:
        result.problems.append(f"raw inline math left in the page text: {raw[:80]}")
    result.problems = list(dict.fromkeys(result.problems))  # a resource is often requested twice
    result.notes.append(
        f"{state['outputs']} outputs, {state['figures']} figures, {state['mjx']} math, "
        f"{len(state['badges'])} Colab badge(s)"
    )
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    html_dir = args.html.resolve()
    if not (html_dir / "index.html").is_file():
        raise CheckError(f"{html_dir}/index.html not found: build the book first (make book)")
    docnames = toc_files(args.toc)
    repo, branch = repository(args.config)
    names = [Path(d).name for d in docnames]
    if len(set(names)) != len(names):
        names = [d.replace("/", "__") for d in docnames]
    mathjax = local_mathjax(args.cache)
    chromium = find_chromium(args.chromium)
    args.screenshots.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    server, base_url = serve(html_dir)
    aborted: set[str] = set()
    served_mathjax: list[str] = []

    def route(route, request) -> None:
        url = request.url
        if url.startswith(base_url):
            route.continue_()
        elif url.startswith(MATHJAX_CDN):
            relative = urlsplit(url).path[len(urlsplit(MATHJAX_CDN).path) :]
            target = (mathjax / relative).resolve()
            if target.is_file() and target.is_relative_to(mathjax):
                served_mathjax.append(relative)
                route.fulfill(path=str(target))
            else:
                route.fulfill(status=404, body=f"not in MathJax {MATHJAX_VERSION}: {relative}")
        else:
            aborted.add(url)
            route.abort()

    results: list[PageResult] = []
    started = time.perf_counter()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            for docname, name in zip(docnames, names, strict=True):
                # A fresh context per page: each page is checked as a first visit (empty storage).
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                context.route("**/*", route)
                result = check_page(
                    context,
                    base_url,
                    html_dir,
                    docname,
                    repo,
                    branch,
                    args.screenshots / f"{name}.png",
                    aborted,
                    args.timeout * 1000,
                )
                context.close()
                results.append(result)
                status = "ok  " if not result.problems else "FAIL"
                print(f"{status} {docname:40s} {result.seconds:5.1f} s  {'; '.join(result.notes)}")
                for problem in result.problems:
                    print(f"       - {problem}")
            browser.close()
    finally:
        server.shutdown()

    failed = [r for r in results if r.problems]
    print(
        f"\n{len(results)} pages in {time.perf_counter() - started:.1f} s; MathJax {MATHJAX_VERSION} "
        f"served locally ({len(set(served_mathjax))} files); {len(aborted)} offline request(s) "
        f"aborted; screenshots in {args.screenshots}"
    )
    if args.verbose and aborted:
        print("aborted:", *sorted(aborted), sep="\n  ")
    if failed:
        count = sum(len(r.problems) for r in failed)
        print(f"\nBROWSER CHECK FAILED: {count} problem(s) on {len(failed)} page(s):")
        for r in failed:
            for problem in r.problems:
                print(f"  {r.docname}: {problem}")
        return 1
    print("browser check passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=REPO / "_build" / "html")
    parser.add_argument("--toc", type=Path, default=REPO / "_toc.yml")
    parser.add_argument("--config", type=Path, default=REPO / "_config.yml")
    parser.add_argument("--screenshots", type=Path, default=REPO / "_build" / "screenshots")
    parser.add_argument("--cache", type=Path, default=REPO / "_build" / ".cache")
    parser.add_argument("--chromium", help="Chromium executable (default: chromium on PATH)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per page (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list aborted requests")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except CheckError as exc:
        print(f"browser check cannot run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
