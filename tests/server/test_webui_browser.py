"""The chat page at / in a real browser: Debian's chromium driven by Playwright, on the real server process
and model. Screenshots go to test-artifacts/webui/ (or $JANLIB_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import requests

import janlib
from server_util import API_KEY, start

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1200, "height": 800}
PHONE = {"width": 390, "height": 844}
WEBUI = Path(__file__).resolve().parents[2] / "src" / "janlib" / "server" / "webui"
# The grammar leaves the model one answer: markup that would run script if the page parsed it as HTML.
FORCED_MARKUP = '<img src=x onerror=alert(1)> [click](javascript:alert(2)) <script>alert(3)</script>'

# The raw body of every completion stream the page reads, kept in window.streams: a copy of the response
# (the browser's own record of a streamed body is not kept reliably).
KEEP_STREAMS = """
window.streams = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
    const response = await pageFetch(...args);
    if (String(args[0]).includes("chat/completions")) {
        const index = window.streams.push(null) - 1;
        response.clone().text().then((text) => { window.streams[index] = text; }, () => {});
    }
    return response;
};
"""


@pytest.fixture(scope="module")
def browser():
    """Chromium, or a skip where it is missing; a failure in CI, which installs it (.ci/run)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def open_server():
    """No key, one slot: a slot the page failed to free would keep /health busy."""
    s = start("--ctx-size", "1024", "--threads", "1", "--log-level", "warning")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def artifacts():
    folder = Path(os.environ.get("JANLIB_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
    folder = folder / "webui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser):
    """A fresh browser profile (empty storage); script errors and dialogs (an alert()) fail the test.
    The page's Content-Security-Policy is bypassed: Playwright's waits evaluate strings, and the page's own
    rendering is what is under test here, not the policy that backs it up."""
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.add_init_script(KEEP_STREAMS)
    yield page
    context.close()
    assert not page.problems


def open_page(page, server):
    page.goto(server.base + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.length > 2")


def set_settings(page, **fields):
    page.click("#settings-button")
    for name, value in fields.items():
        page.fill(f"#settings-form [name={name}]", str(value))
    page.click("#settings-close")


def send(page, text):
    """Send text and return the request body the page posted."""
    with page.expect_request("**/v1/chat/completions") as request:
        page.fill("#input", text)
        page.press("#input", "Enter")
    return request.value.post_data_json


def wait_done(page, timeout=90_000):
    """Until the last answer shows its statistics line (the stream ended)."""
    page.wait_for_selector("#stop", state="hidden", timeout=timeout)
    return page.locator(".message.assistant").last


def last_answer_text(page) -> str:
    return page.locator(".message.assistant .content").last.inner_text()


def record_growth(page):
    """Record the length of the streaming answer's text at each DOM change (read with growth(page))."""
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('.message.assistant .content');
            if (answers.length) window.lengths.push(answers[answers.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")


def growth(page) -> list[int]:
    lengths = page.evaluate("window.lengths")
    return [n for i, n in enumerate(lengths) if n > 0 and (i == 0 or n != lengths[i - 1])]


def last_stream(page) -> list[dict]:
    """The events of the last completion stream the page read, as the server sent them."""
    page.wait_for_function("window.streams.length && window.streams[window.streams.length - 1] !== null")
    text = page.evaluate("window.streams[window.streams.length - 1]")
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line != "data: [DONE]"]


def health(server) -> dict:
    return requests.get(server.base + "/health", timeout=5).json()


@pytest.mark.slow
def test_page_and_files_load_without_a_key(server):
    """The keyed server serves the page and its files without a key; the API behind them still wants one."""
    page = requests.get(server.base + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for src in re.findall(r'(?:src|href)="(webui/[^"]+)"', page.text):
        assert requests.get(f"{server.base}/{src}", timeout=10).status_code == 200, src
    assert requests.get(server.base + "/v1/models", timeout=10).status_code == 401


@pytest.mark.slow
def test_app_files_load_without_a_key(server):
    """The installable app's files are public on a keyed server, as llama-server's (its test_security.py asks
    the same); the API still wants the key."""
    manifest = requests.get(server.base + "/manifest.webmanifest", timeout=10)
    assert manifest.status_code == 200 and manifest.headers["Content-Type"] == "application/manifest+json"
    assert manifest.json()["name"] == "janlib"
    worker = requests.get(server.base + "/sw.js", timeout=10)
    assert worker.status_code == 200 and worker.headers["Content-Type"].startswith("text/javascript")
    assert worker.headers["Cache-Control"] == "no-cache"
    version = requests.get(server.base + "/_app/version.json", timeout=10)
    assert version.status_code == 200 and version.json() == {"version": janlib.__version__}
    for response in (manifest, worker, version):
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert requests.get(server.base + "/v1/models", timeout=10).status_code == 401


def test_page_never_parses_text_as_html():
    """What the page draws is built from text nodes: no HTML parser is ever handed a string."""
    for script in WEBUI.glob("*.js"):
        source = script.read_text("utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"


@pytest.mark.slow
def test_streams_keeps_and_fits_a_phone(page, open_server, artifacts):
    open_page(page, open_server)
    set_settings(page, temperature=0, max_tokens=40, system="You are a storyteller.")
    record_growth(page)
    body = send(page, "Tell me a story about a robot who learns to paint.")
    answer = wait_done(page)
    # the settings and the streaming options reached the request
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0 and body["max_tokens"] == 40
    assert body["messages"][0] == {"role": "system", "content": "You are a storyteller."}
    steps = growth(page)
    assert len(steps) >= 3 and steps == sorted(steps), f"the answer did not arrive in steps: {steps} {page.evaluate('window.lengths')} {answer.inner_text()}"

    # tokens/s as the server measured it
    timings = [e for e in last_stream(page) if "timings" in e][-1]["timings"]
    stats = answer.locator(".stats").inner_text()
    assert f"{timings['predicted_n']} tokens" in stats
    assert f"{timings['predicted_per_second']:.1f} tokens/s" in stats
    text = last_answer_text(page)
    assert len(text) > 20
    page.screenshot(path=artifacts / "chat-desktop.png")

    # a reload finds the conversation, listed and shown
    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.locator("#conversations li").count() == 1
    assert "robot who learns to paint" in page.locator("#conversations li.active").inner_text()
    assert last_answer_text(page) == text

    # phone width: nothing wider than the screen, the composer on screen, the list behind a menu
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)  # the sidebar's slide-out transition
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    send_box = page.locator("#send").bounding_box()
    assert send_box["x"] + send_box["width"] <= PHONE["width"] and send_box["y"] + send_box["height"] <= PHONE["height"]
    sidebar = page.locator("#sidebar").bounding_box()
    assert sidebar["x"] + sidebar["width"] <= 0
    page.screenshot(path=artifacts / "chat-phone.png")
    page.click("#menu")
    page.wait_for_timeout(300)
    assert page.locator("#conversations li").first.bounding_box()["x"] >= 0
    page.screenshot(path=artifacts / "chat-phone-conversations.png")
    page.click("#backdrop", position={"x": PHONE["width"] - 20, "y": PHONE["height"] // 2})  # beside the list
    page.click("#settings-button")
    dialog = page.locator("#settings").bounding_box()
    assert dialog["x"] >= 0 and dialog["x"] + dialog["width"] <= PHONE["width"]
    page.screenshot(path=artifacts / "settings-phone.png")


@pytest.mark.slow
def test_stop_ends_the_stream_and_frees_the_slot(page, open_server, artifacts):
    open_page(page, open_server)
    set_settings(page, max_tokens=800, extra=json.dumps({"ignore_eos": True}))
    send(page, "Count from one to one thousand in words.")
    page.wait_for_function("document.querySelector('.message.assistant .content').textContent.length > 40")
    assert health(open_server)["slots_processing"] == 1
    page.click("#stop")
    answer = wait_done(page, timeout=10_000)
    assert "stopped" in answer.locator(".stats").inner_text()
    stopped_text = last_answer_text(page)
    deadline = time.monotonic() + 10
    while health(open_server)["slots_processing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert health(open_server)["slots_processing"] == 0, "the server kept generating for a gone client"
    assert last_answer_text(page) == stopped_text  # nothing arrived after the stop
    page.screenshot(path=artifacts / "chat-stopped.png")

    # the next request gets the slot and finishes
    set_settings(page, max_tokens=8, extra="")
    send(page, "Say hello.")
    answer = wait_done(page, timeout=30_000)
    assert re.search(r"\d+ tokens/s", answer.locator(".stats").inner_text())
    assert page.locator(".message.assistant").count() == 2


@pytest.mark.slow
def test_forced_markup_is_shown_as_text(page, open_server, artifacts):
    open_page(page, open_server)
    grammar = "root ::= " + json.dumps(FORCED_MARKUP)
    set_settings(page, extra=json.dumps({"grammar": grammar}))
    send(page, "Show me an image.")
    wait_done(page)
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in last_stream(page) if e["choices"])
    assert streamed == FORCED_MARKUP  # the model did answer the markup
    answer = page.locator(".message.assistant .content").last
    assert "<img src=x onerror=alert(1)>" in answer.inner_text()
    assert "[click](javascript:alert(2))" in answer.inner_text()
    assert "<script>alert(3)</script>" in answer.inner_text()
    assert page.evaluate("document.querySelectorAll('img, script:not([src]), iframe, object').length") == 0
    assert page.evaluate("[...document.querySelectorAll('a')].filter(a => !/^https?:/.test(a.href)).length") == 0
    page.wait_for_timeout(200)  # an onerror handler would have fired by now; the page fixture checks dialogs
    page.screenshot(path=artifacts / "chat-forced-markup.png")


@pytest.mark.slow
def test_key_prompt_then_chat_with_the_key(page, server, artifacts):
    page.goto(server.base + "/")
    page.wait_for_selector("#key-dialog[open]")  # /v1/models answered 401
    page.screenshot(path=artifacts / "chat-key-prompt.png")
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    page.wait_for_function("document.getElementById('key-message').textContent.includes('invalid API key')")
    page.fill("#key-input", API_KEY)
    page.click("#key-submit")
    page.wait_for_function("document.getElementById('model-name').textContent.length > 2")
    assert not page.locator("#key-dialog").is_visible()

    set_settings(page, max_tokens=8, temperature=0)
    with page.expect_request("**/v1/chat/completions") as request:
        page.fill("#input", "Hello!")
        page.press("#input", "Enter")
    assert request.value.headers["authorization"] == f"Bearer {API_KEY}"
    answer = wait_done(page)
    assert not answer.locator(".error").is_visible()
    assert re.search(r"\d+ tokens/s", answer.locator(".stats").inner_text())
    # the key lives in this tab's sessionStorage, not in localStorage with the conversations
    assert page.evaluate("sessionStorage.getItem('janlib.apiKey')") == API_KEY
    assert API_KEY not in page.evaluate("JSON.stringify(localStorage)")


MARKDOWN_SAMPLE = """# Title

Some **bold**, *italic*, `a < b` and [a link](https://example.com/a_(b)) or [bad](javascript:alert(1)).

- one
- two
  1. nested

```python
if a < b:
    print("<b>")
```

| x | y |
|---|--:|
| 1 | 2 |

> quoted <i>tag</i>"""


@pytest.mark.slow
def test_markdown_blocks_and_inline(page, open_server):
    """The page's renderer on a fixed sample: the structure a reader expects, markup in it left as text."""
    open_page(page, open_server)
    html = page.evaluate("""async (source) => {
        const { renderMarkdown } = await import('./webui/markdown.js');
        const div = document.createElement('div');
        div.append(renderMarkdown(source));
        div.querySelectorAll('button').forEach((b) => b.remove());  // the code block's copy button
        return div.innerHTML;
    }""", MARKDOWN_SAMPLE)
    expected = [
        "<h1>Title</h1>",
        "<p>Some <strong>bold</strong>, <em>italic</em>, <code>a &lt; b</code> and "
        '<a href="https://example.com/a_(b)" target="_blank" rel="noopener noreferrer nofollow">a link</a> '
        "or [bad](javascript:alert(1)).</p>",
        "<ul><li>one</li><li>two<ol><li>nested</li></ol></li></ul>",
        '<div><pre data-language="python"><code class="language-python">if a &lt; b:\n    print("&lt;b&gt;")'
        "</code></pre></div>",
        '<div><table><thead><tr><th>x</th><th class="align-right">y</th></tr></thead>'
        '<tbody><tr><td>1</td><td class="align-right">2</td></tr></tbody></table></div>',
        "<blockquote><p>quoted &lt;i&gt;tag&lt;/i&gt;</p></blockquote>",
    ]
    assert html == "".join(expected)


def css_colour(name: str) -> str:
    """The light theme's value of a custom property in style.css."""
    return re.search(rf"--{name}:\s*(#[0-9a-f]{{6}})", (WEBUI / "style.css").read_text("utf-8")).group(1)


@pytest.mark.slow
def test_installs_and_starts_while_the_server_is_down(browser, artifacts):
    """Manifest, service worker and offline start, on a server of its own (it is stopped), under the page's
    real Content-Security-Policy (a violation would show as a console error)."""
    own_server = start("--ctx-size", "512", "--threads", "1", "--log-level", "warning")
    base = own_server.base
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    responses = []
    page.on("response", lambda response: responses.append(response))
    try:
        page.goto(base + "/")
        page.wait_for_selector("#model-name:not(:empty)")

        # the manifest: linked, parsed, its icons there
        manifest_url = page.evaluate("document.querySelector('link[rel=manifest]').href")
        assert manifest_url == base + "/manifest.webmanifest"
        manifest = requests.get(manifest_url, timeout=10).json()
        assert manifest["name"] == "janlib" and manifest["short_name"]
        assert manifest["display"] == "standalone"
        for field in ("start_url", "scope"):  # relative to the manifest, as the page's own links
            assert requests.compat.urljoin(manifest_url, manifest[field]) == base + "/"
        assert manifest["theme_color"] == manifest["background_color"] == css_colour("bg")
        assert page.evaluate("document.querySelector('meta[name=theme-color]').content") == css_colour("bg")
        assert any(icon["purpose"] == "any" and icon["sizes"] == "any" for icon in manifest["icons"])
        for icon in manifest["icons"]:
            image = requests.get(requests.compat.urljoin(manifest_url, icon["src"]), timeout=10)
            assert image.status_code == 200 and image.headers["Content-Type"].startswith(icon["type"])

        # the worker registers for the whole page and controls it after a reload
        worker = page.evaluate("navigator.serviceWorker.ready.then((r) => [r.scope, r.active.scriptURL])")
        assert worker == [base + "/", base + "/sw.js"]
        responses.clear()
        page.reload()
        page.wait_for_selector("#model-name:not(:empty)")
        assert page.evaluate("navigator.serviceWorker.controller.scriptURL") == base + "/sw.js"
        by_path = {response.url.removeprefix(base): response for response in responses}
        assert by_path["/webui/app.js"].from_service_worker  # the page's files pass through the worker
        assert by_path["/v1/models"].status == 200 and not by_path["/v1/models"].from_service_worker

        # a request the page makes now, the worker in control: straight to the server, never cached
        with page.expect_response(base + "/v1/models") as models:
            assert page.evaluate("fetch('v1/models').then((r) => r.status)") == 200
        assert not models.value.from_service_worker
        cached = page.evaluate("""async () => {
            const names = await caches.keys();
            const urls = [];
            for (const name of names) urls.push(...(await (await caches.open(name)).keys()).map((r) => r.url));
            return [names, urls];
        }""")
        assert cached[0] == [f"janlib-webui-{janlib.__version__}"]
        cached_paths = {url.removeprefix(base) for url in cached[1]}
        linked = {"/" + src for src in re.findall(r'(?:src|href)="([^"]+)"', (WEBUI / "index.html").read_text())}
        assert {"/", "/manifest.webmanifest"} | linked <= cached_paths
        assert all(path == "/" or path == "/manifest.webmanifest" or path.startswith("/webui/") for path in cached_paths)

        # the server goes away: the page still starts, from the cache, and says that /v1 is unreachable
        own_server.stop()
        page.reload()
        page.wait_for_selector("#model-name:not(:empty)")
        assert page.title() == "janlib chat" and page.locator("#composer").is_visible()
        assert "smollm2" not in page.locator("#model-name").inner_text().lower()
        page.screenshot(path=artifacts / "chat-server-down.png")
    finally:
        context.close()
        own_server.stop()
    # the reload while the server is down logs its failed /v1 request; nothing else may go wrong
    assert [p for p in problems if "Failed to load resource" not in p] == []


@pytest.mark.slow
def test_upgraded_server_offers_a_reload(page, open_server):
    """A later /_app/version.json naming another version (the server was upgraded) shows a notice."""
    answers = []

    def version(route):
        answers.append(janlib.__version__ if not answers else "99.0.0")
        route.fulfill(json={"version": answers[-1]})

    page.route("**/_app/version.json", version)
    open_page(page, open_server)
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert answers and page.locator("#upgraded").is_hidden()
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_selector("#upgraded", state="visible")
    assert "janlib 99.0.0" in page.locator("#upgraded").inner_text()
    with page.expect_navigation():
        page.click("#reload")
