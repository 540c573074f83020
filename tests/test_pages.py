"""The browser pages: the live test page at /websocket-test and the Admin UI's page, driven in
Debian's Chromium (headless, through Playwright's Python package), and the npm files they ship.

Screenshots are left in $ARTIFACTS_DIR (default: test-artifacts/ in the repository, which git
ignores), for a person to look at.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from handlers.web_assets import (
    ADMIN_UI_DIR,
    VERSIONS_FILE,
    admin_ui_index,
    copied_files,
    pinned_versions,
)
from realtime.config import load_settings
from server.app import create_app
from tests.clients import ROOT
from tests.gateways import GatewayProcess
from tests.tools import require

# as root, in a sandbox with no network: no sandbox of its own, nothing fetched in the background
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = os.environ.get("ARTIFACTS_DIR") or os.path.join(ROOT, "test-artifacts")
SERVICE_TOKEN = "pages-tests-service-token-0123"
WAIT_MS = 15_000
pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)


# -- the shipped files -------------------------------------------------------------------------
def test_the_shipped_browser_files_are_the_versions_package_json_pins():
    node_modules = os.path.join(ROOT, "node_modules")
    with open(VERSIONS_FILE) as handle:
        shipped = json.load(handle)
    assert shipped == pinned_versions(os.path.join(ROOT, "package.json")), (
        "run scripts/refresh-web-assets"
    )
    for package, version in shipped.items():
        with open(os.path.join(node_modules, package, "package.json")) as handle:
            assert json.load(handle)["version"] == version, f"{package}: run npm ci"
    files = list(copied_files(node_modules))
    assert len(files) > 5
    for source, target in files:
        assert filecmp.cmp(source, target, shallow=False), (
            f"{target}: run scripts/refresh-web-assets"
        )
    index = os.path.join(node_modules, "@socket.io", "admin-ui", "ui", "dist", "index.html")
    with open(index) as page, open(os.path.join(ADMIN_UI_DIR, "index.html")) as ours:
        assert ours.read() == admin_ui_index(page.read())


def test_the_test_page_is_on_with_the_embedded_store_and_off_with_mongodb(tmp_path):
    embedded = {"STORE_PATH": str(tmp_path / "r.db")}
    assert load_settings(embedded).serves_test_page
    assert not load_settings({**embedded, "TEST_PAGE": "false"}).serves_test_page
    mongo = {"MONGODB_URL": "mongodb://127.0.0.1:1/?replicaSet=rs0", "JWT_SECRET": "k" * 32}
    assert not load_settings(mongo).serves_test_page
    assert load_settings({**mongo, "TEST_PAGE": "true"}).serves_test_page


async def off_hint(response: aiohttp.ClientResponse) -> str:
    """The coded 404 a page that is off answers: its message says how to turn it on."""
    assert response.status == 404
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert error["code"] == "not_found"
    return error["message"]


@pytest.mark.env(TEST_PAGE="false", JWT_SECRET="")  # a dev secret: the dev routes would be on
async def test_with_test_page_false_nothing_of_it_is_served(http):
    for path in ("/websocket-test", "/websocket-test/"):
        async with http.get(path) as response:
            assert "TEST_PAGE=true" in await off_hint(response), path
    for path in ("/websocket-test/websocket-test.js", "/websocket-test/gateway-client.js"):
        async with http.get(path) as response:
            assert response.status == 404, path
            assert "TEST_PAGE" not in await response.text()
    for path in ("/websocket-test/dev-token", "/websocket-test/dev-broadcast-token"):
        async with http.post(path, json={"sub": "a", "role": "admin"}) as response:
            assert response.status in (404, 405), path


async def test_without_credentials_the_admin_ui_says_how_to_turn_it_on(http):
    for path in ("/admin-ui/", "/admin-ui"):
        async with http.get(path, allow_redirects=False) as response:
            message = await off_hint(response)
        for hint in ("ADMIN_UI_USERNAME", "ADMIN_UI_PASSWORD", "--demo"):
            assert hint in message, (path, message)
    # nothing of the UI itself is served
    for path in ("/admin-ui/favicon.png", "/admin-ui/mdi/css/materialdesignicons.min.css"):
        async with http.get(path) as response:
            assert response.status == 404, path
            assert "ADMIN_UI" not in await response.text()


async def test_the_page_and_its_files_are_served_with_their_types(http):
    async with http.get("/websocket-test") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        page = await response.text()
    assert '"devTokens": false' in page and "{{PAGE_CONFIG}}" not in page
    assert '"devBroadcastToken": false' in page and '"shopIds": "shop_ids"' in page
    for name in ("websocket-test.js", "gateway-client.js", "vendor/socket.io.esm.min.js"):
        async with http.get(f"/websocket-test/{name}") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
    async with http.get("/websocket-test/../setup.cfg") as response:
        assert response.status == 404


# -- dev tokens --------------------------------------------------------------------------------
DEV_SECRET = pytest.mark.env(JWT_SECRET="")  # unset: the embedded store's generated secret


@DEV_SECRET
async def test_a_dev_token_authenticates_with_the_embedded_stores_secret(http, clients):
    body = {"sub": "s7", "role": "staff", "shopIds": ["1", "2"]}
    async with http.post("/websocket-test/dev-token", json=body) as response:
        assert response.status == 200
        token = (await response.json())["token"]
    client = clients("py-websocket")
    await client.connect({"token": token})
    welcome = await client.next_event("auth_success")
    assert welcome["userId"] == "s7" and welcome["role"] == "staff"
    for shop in ("1", "2"):
        assert (await client.call("join_room", {"roomId": f"shop-{shop}"}))["ok"] is True


@DEV_SECRET
@pytest.mark.parametrize(
    "body",
    [{}, {"sub": "x", "role": "root"}, {"sub": "", "role": "admin"}, [1], "x", {"sub": 1}],
    ids=["empty", "bad-role", "empty-sub", "list", "string", "number-sub"],
)
async def test_a_bad_dev_token_request_is_refused_with_a_code(http, body):
    async with http.post("/websocket-test/dev-token", json=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_payload"


@DEV_SECRET
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"Host": "rebound.example.com"},
        {"Host": "rebound.example.com:8000"},
    ],
    ids=["through-a-proxy", "forwarded", "real-ip", "another-host", "another-host-port"],
)
async def test_dev_tokens_go_only_to_a_browser_on_this_machine(http, headers):
    body = {"sub": "a", "role": "admin"}
    async with http.post("/websocket-test/dev-token", json=body, headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    async with http.post("/websocket-test/dev-token", json=body) as response:
        assert response.status == 200  # the same request, straight from this machine


@DEV_SECRET
async def test_a_dev_token_request_must_be_json(http):
    async with http.post("/websocket-test/dev-token", data="sub=a&role=admin") as response:
        assert response.status == 415


async def test_no_dev_tokens_with_a_configured_secret(http):
    async with http.post("/websocket-test/dev-token", json={"sub": "a", "role": "admin"}) as r:
        assert r.status in (404, 405)


# -- the demo's broadcast token ----------------------------------------------------------------
@pytest.fixture
async def demo_http(aiohttp_server, settings) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client on a gateway whose BROADCAST_TOKEN `--demo` made."""
    server = await aiohttp_server(create_app(settings.replace(broadcast_token_generated=True)))
    async with aiohttp.ClientSession(str(server.make_url(""))) as session:
        yield session


async def test_the_demos_broadcast_token_is_given_to_a_browser_on_this_machine(demo_http):
    async with demo_http.get("/websocket-test") as response:
        assert '"devBroadcastToken": true' in await response.text()
    async with demo_http.post("/websocket-test/dev-broadcast-token") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert await response.json() == {"token": SERVICE_TOKEN}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Forwarded-Host": "rt.example.com"},
        {"X-Real-IP": "203.0.113.9"},
        {"Host": "rebound.example.com"},
    ],
    ids=["through-a-proxy", "forwarded", "forwarded-host", "real-ip", "another-host"],
)
async def test_the_demos_broadcast_token_goes_only_to_this_machine(demo_http, headers):
    async with demo_http.post("/websocket-test/dev-broadcast-token", headers=headers) as response:
        assert response.status == 403
        body = await response.json()
    assert body["error"]["code"] == "forbidden" and SERVICE_TOKEN not in json.dumps(body)


async def test_an_operators_broadcast_token_is_never_given(http):
    """BROADCAST_TOKEN set by the operator (not made by `--demo`): no route gives it."""
    async with http.post("/websocket-test/dev-broadcast-token") as response:
        assert response.status in (404, 405)
        assert SERVICE_TOKEN not in await response.text()


# -- in Chromium -------------------------------------------------------------------------------
class Browser:
    """One headless Chromium page, with the console errors it printed."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def state(self, state: str, transport: str | None = None) -> None:
        await self.page.wait_for_selector(f'#state[data-state="{state}"]', timeout=WAIT_MS)
        if transport is not None:
            await self.page.wait_for_function(
                f"document.getElementById('transport-now').textContent === {transport!r}",
                timeout=WAIT_MS,
            )

    async def logged(self, event: str, event_id: str | None = None):
        selector = f'#log li[data-event="{event}"]'
        if event_id is not None:
            selector += f'[data-event-id="{event_id}"]'
        return await self.page.wait_for_selector(selector, timeout=WAIT_MS)

    async def screenshot(self, name: str) -> str:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        await self.page.evaluate("window.scrollTo(0, 0)")  # the page as it opens, whole
        await self.page.screenshot(path=path, full_page=True)
        return path


@contextlib.asynccontextmanager
async def chromium_page(**page_options) -> AsyncIterator[Browser]:
    """A page of a headless Chromium, closed on the way out."""
    executable = require("chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield Browser(await chromium.new_page(**page_options))
        finally:
            await chromium.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium_page() as opened:
        yield opened


async def broadcast(url: str, **audience) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/broadcast",
            json={"event": "notification", "data": {"title": "from the test"}, **audience},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as response,
    ):
        assert response.status == 202, await response.text()
        return (await response.json())["eventId"]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_link_connects_the_page_and_it_shows_a_broadcast(
    browser, base_url, token, transport
):
    staff = token("s1", "staff", ["1"])
    await browser.page.goto(
        f"{base_url}/websocket-test?token={staff}&rooms=shop-1&transport={transport}"
    )
    await browser.state("connected", transport)
    await browser.page.wait_for_selector('#rooms li[data-room="shop-1"]', timeout=WAIT_MS)
    await browser.logged("auth_success")
    assert not await browser.page.is_visible("#dev-token")  # a configured secret: no dev tokens
    event_id = await broadcast(base_url, rooms=["shop-1"])
    entry = await browser.logged("notification", event_id)
    assert "from the test" in await entry.inner_text()
    assert await browser.page.inner_text("#cursor") == event_id
    # the form says what the link said, and the page's own link reproduces the case
    assert await browser.page.input_value("#token") == staff
    assert await browser.page.is_checked(f'input[name="transport"][value="{transport}"]')
    link = await browser.page.get_attribute("#share-link", "href")
    assert "rooms=shop-1" in link and f"transport={transport}" in link
    await browser.screenshot(f"websocket-test-{transport}.png")
    assert browser.errors == []


@DEV_SECRET
async def test_the_dev_token_button_and_the_room_form(browser, base_url):
    page = browser.page
    await page.goto(f"{base_url}/websocket-test")
    await page.wait_for_selector("body[data-ready]")
    assert await page.is_visible("#dev-token")
    await page.fill("#dev-sub", "s2")
    await page.select_option("#dev-role", "staff")
    await page.fill("#dev-shops", "9")
    await page.click("#dev-token")
    await page.wait_for_function("document.getElementById('token').value.length > 20")
    await page.click("#connect")
    await browser.state("connected", "websocket")
    await page.fill("#room", "shop-9")
    await page.click("#join")
    await page.wait_for_selector('#rooms li[data-room="shop-9"]', timeout=WAIT_MS)
    event_id = await broadcast(base_url, rooms=["shop-9"])
    await browser.logged("notification", event_id)
    # a room the token does not allow: refused, and said so on the page
    await page.fill("#room", "shop-10")
    await page.click("#join")
    refusal = await browser.logged("forbidden")
    assert "shop-10" not in await page.inner_text("#rooms")
    assert refusal is not None
    await page.click('#rooms li[data-room="shop-9"] button.leave')
    await page.wait_for_selector('#rooms li[data-room="shop-9"]', state="detached")
    await page.click("#disconnect")
    await browser.state("closed")
    # a failed join is logged by the page, not thrown into the console
    assert browser.errors == []


async def test_after_a_gateway_restart_the_page_shows_what_it_replayed(
    browser, tmp_path, free_port, raw_token
):
    """The page's gateway stops; while it is down another instance on the same store takes
    three broadcasts; the gateway comes back on the same port, and the page rejoins and
    replays them."""
    secret = "pages-restart-secret-0123456789abcdef"
    env = {
        "STORE_PATH": str(tmp_path / "shared.db"),
        "JWT_SECRET": secret,
        "BROADCAST_TOKEN": SERVICE_TOKEN,
    }
    port = free_port()
    gateway = await GatewayProcess(env, port).start()
    other = None
    try:
        staff = raw_token(
            {"sub": "s1", "role": "staff", "shop_ids": ["1"], "exp": 4102444800}, secret
        )
        await browser.page.goto(f"{gateway.url}/websocket-test?token={staff}&rooms=shop-1")
        await browser.state("connected", "websocket")
        await browser.page.wait_for_selector('#rooms li[data-room="shop-1"]', timeout=WAIT_MS)
        first = await broadcast(gateway.url, rooms=["shop-1"])
        await browser.logged("notification", first)

        await gateway.stop()
        await browser.state("reconnecting")
        other = await GatewayProcess(env, free_port()).start()
        missed = [await broadcast(other.url, rooms=["shop-1"]) for _ in range(3)]
        await other.stop()
        gateway = await GatewayProcess(env, port).start()

        for event_id in missed:
            entry = await browser.logged("notification", event_id)
            assert "replayed" in await entry.inner_text()
        await browser.page.wait_for_function(
            "document.getElementById('replayed').textContent === '3'", timeout=WAIT_MS
        )
        await browser.state("connected", "websocket")
        assert await browser.page.inner_text("#cursor") == missed[-1]
        # each event once: the first one was not replayed again
        assert await browser.page.locator(f'#log li[data-event-id="{first}"]').count() == 1
        await browser.screenshot("websocket-test-after-restart.png")
        # the transport closed under it: the client logs that as a failed request, nothing else
        assert [e for e in browser.errors if "ERR_CONNECTION_REFUSED" not in e] == []
    finally:
        await gateway.stop()
        if other is not None:
            await other.stop()


ADMIN = {"username": "ops", "password": "correct horse battery"}


@pytest.mark.env(ADMIN_UI_USERNAME=ADMIN["username"], ADMIN_UI_PASSWORD=ADMIN["password"])
async def test_the_admin_ui_loads_and_connects(browser, base_url, connect):
    await connect("py-websocket", sub="c1")
    page = browser.page
    await page.goto(f"{base_url}/admin-ui/")
    # the connection form offers this gateway; the credentials are the person's to type
    assert await page.get_by_label("Server URL").input_value() == base_url
    await page.get_by_label("Username").fill(ADMIN["username"])
    await page.get_by_label("Password").fill(ADMIN["password"])
    await page.get_by_role("button", name="Connect").click()
    await page.wait_for_selector(".v-chip:has-text('Connected')", timeout=WAIT_MS)
    # the gateway's socket is listed, and its user's room
    await page.get_by_role("link", name="Sockets").click()
    await page.wait_for_selector("td:has-text('127.0.0.1')", timeout=WAIT_MS)
    await page.get_by_role("link", name="Rooms").click()
    await page.wait_for_selector("text=user-c1", timeout=WAIT_MS)
    await browser.screenshot("admin-ui.png")
    # read-only here: a socket's page shows who it is, and its join form is disabled (the
    # UI's own read-only switch is on from the start)
    await page.get_by_role("link", name="Sockets").click()
    await page.locator("tbody tr").first.click()
    await page.wait_for_selector("text=userId", timeout=WAIT_MS)
    join = page.locator("form").filter(has_text="Join a room")
    assert await join.locator("input").first.is_disabled()
    assert browser.errors == []
