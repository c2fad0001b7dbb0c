"""Drives the live pipeline page in a real browser (Debian's chromium,
headless, through Playwright from PyPI) for tests/cli/ui.rs:

  python page_check.py <url> [--screenshot out.png]

Prints `ready` once the browser is up (the test starts the run then), loads
the page as soon as it is served, records what the page shows while the run
goes, waits until it says `finished`, and prints one JSON object:

  graph:      the component names the pipeline graph draws, and its edges
  running:    the sink's `rows out` as the page showed it at each poll while
              the run was running (the numbers must move)
  components: {name: {rows_in, rows_out, rows_skipped, rows_dead_lettered}}
              as the page's table shows them at the end
  commits:    the epochs of the commits the page lists
  dead_letters: the cells of the dead letters the page lists
"""
import argparse
import json
import os
import shutil
import sys
import time

from playwright.sync_api import sync_playwright

FIELDS = ["rows_in", "rows_out", "rows_skipped", "rows_dead_lettered"]


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("page_check: no chromium on PATH (Debian package `chromium`)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--sink", default="out")
    p.add_argument("--screenshot")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    deadline = time.time() + args.timeout
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        print("ready", flush=True)
        while True:  # the run starts its server after the test reads `ready`
            try:
                page.goto(args.url, timeout=5000)
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit(f"page_check: {args.url} never answered")
                time.sleep(0.1)
        running = []
        shot = False
        while True:
            status = page.evaluate("document.body.dataset.status || ''")
            value = page.evaluate(
                """(sink) => {
                    const td = document.querySelector(`tr[data-component="${sink}"] [data-field="rows_out"]`);
                    return td ? Number(td.dataset.value) : null;
                }""",
                args.sink,
            )
            if status == "running" and value is not None:
                running.append(value)
                # a few seconds in: the charts have something to show
                if args.screenshot and not shot and len(running) >= 10:
                    page.screenshot(path=args.screenshot, full_page=True)
                    shot = True
            if status in ("finished", "failed"):
                break
            if time.time() > deadline:
                sys.exit(f"page_check: the page still says {status!r}")
            time.sleep(0.2)
        graph = page.evaluate(
            """() => ({
                nodes: [...document.querySelectorAll('#graph [data-node]')].map(n => n.dataset.node),
                edges: [...document.querySelectorAll('#graph [data-edge]')].map(e => e.dataset.edge),
            })"""
        )
        components = page.evaluate(
            """(fields) => Object.fromEntries([...document.querySelectorAll('#components tr[data-component]')]
                .map(tr => [tr.dataset.component, Object.fromEntries(fields.map(f =>
                    [f, Number(tr.querySelector(`[data-field="${f}"]`).dataset.value)]))]))""",
            FIELDS,
        )
        commits = page.evaluate("[...document.querySelectorAll('#commits tr[data-epoch]')].map(r => Number(r.dataset.epoch))")
        dead_letters = page.evaluate(
            "[...document.querySelectorAll('#dead-letters tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
        if args.screenshot and not shot:
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    print(json.dumps({"status": status, "graph": graph, "running": running,
                      "components": components, "commits": commits,
                      "dead_letters": dead_letters}), flush=True)


if __name__ == "__main__":
    main()
