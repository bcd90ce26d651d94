"""Opens every page of the built site in headless Chromium and checks it.

A page fails if the browser logs an error (a script error, a file that does
not load) or if one of its images does not display. A screenshot of each page
is written, to look at. Run by `nox -s docs` after `mkdocs build`:

    python docs/check_site.py site --screenshots site-screenshots
"""

import argparse
import functools
import http.server
import pathlib
import sys
import threading

from playwright.sync_api import sync_playwright

# Without the networking flags, Chromium tries to reach Google's services at
# start and logs each refused connection.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory):
    """Serves `directory` on a free localhost port; returns the base URL."""
    handler = functools.partial(QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/"


def pages_of(site):
    """The site's pages, as paths relative to the site: one per index.html."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        if relative != "search" and not relative.startswith("assets"):
            pages.append("" if relative == "." else relative + "/")
    return pages


def check_page(browser, url, screenshot):
    """The problems of one page, after writing its screenshot."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.goto(url, wait_until="networkidle")
    broken = page.eval_on_selector_all(
        "img", "images => images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    problems += [f"image not displayed: {src}" for src in broken]
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", help="the built site (mkdocs' site_dir)")
    parser.add_argument("--screenshots", default="site-screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    site = pathlib.Path(args.site)
    if not (site / "index.html").is_file():
        sys.exit(f"No built site in {site}: run `mkdocs build` first.")
    if not pathlib.Path(args.chromium).is_file():
        sys.exit(
            f"Chromium not found at {args.chromium}. Install it (Debian: "
            "`apt-get install chromium`) or pass --chromium PATH."
        )
    screenshots = pathlib.Path(args.screenshots)
    screenshots.mkdir(parents=True, exist_ok=True)
    base = serve(site)
    pages = pages_of(site)
    failures = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for page in pages:
            name = page.strip("/").replace("/", "_") or "index"
            problems = check_page(browser, base + page, screenshots / f"{name}.png")
            print(f"{'FAIL' if problems else 'ok  '} /{page}")
            if problems:
                failures[page] = problems
        browser.close()
    for page, problems in failures.items():
        print(f"\n/{page}:\n  " + "\n  ".join(problems))
    print(
        f"\n{len(pages) - len(failures)} of {len(pages)} pages without "
        f"problems; screenshots in {screenshots}/"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
