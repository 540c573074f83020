"""The live test page as a newcomer uses it, in Chromium: who the socket is, its rooms and the
rooms it may join, compact event rows, pause and filter, each thing logged once, and the
broadcast box.

Screenshots (`page-*.png`) are left in $ARTIFACTS_DIR (default: test-artifacts/), for a person
to look at.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from server.app import create_app
from tests.test_pages import SERVICE_TOKEN, WAIT_MS, Browser, chromium_page

pytestmark = pytest.mark.env(BROADCAST_TOKEN=SERVICE_TOKEN)
VIEWPORT = {"width": 1400, "height": 900}
ROW_HEIGHT_MAX_PX = 30  # a compact row: one line


@pytest.fixture
async def ui() -> AsyncIterator[Browser]:
    async with chromium_page(viewport=VIEWPORT) as opened:
        yield opened


@pytest.fixture
async def demo_url(aiohttp_server, settings) -> str:
    """A gateway whose BROADCAST_TOKEN `--demo` made (the page may fill it in)."""
    server = await aiohttp_server(create_app(settings.replace(broadcast_token_generated=True)))
    return str(server.make_url("")).rstrip("/")


async def post_broadcast(url: str, data: dict, rooms: list[str]) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/broadcast",
            json={"event": "notification", "data": data, "rooms": rooms},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        ) as response,
    ):
        assert response.status == 202, await response.text()
        return (await response.json())["eventId"]


async def open_as_staff_of_shop_1(ui: Browser, url: str, token, rooms: str = "") -> None:
    """The page opened by a link for staff-1 of shop 1, connected, its catch-up done."""
    link = f"{url}/websocket-test?token={token('staff-1', 'staff', ['1'])}"
    await ui.page.goto(link + (f"&rooms={rooms}" if rooms else ""))
    await ui.state("connected", "websocket")
    await ui.page.wait_for_selector('#log li[data-event^="joined"]', timeout=WAIT_MS)
    for room in filter(None, rooms.split(",")):
        await ui.logged(f"join {room}")


async def attribute_of_all(ui: Browser, selector: str, name: str) -> list[str]:
    return await ui.page.eval_on_selector_all(
        selector, f"items => items.map(item => item.dataset[{json.dumps(name)}])"
    )


async def test_the_page_shows_who_the_socket_is_its_rooms_and_the_rooms_it_may_join(
    ui, base_url, token
):
    page = ui.page
    await open_as_staff_of_shop_1(ui, base_url, token)
    # who: from auth_success, apart from the form
    assert await page.inner_text("#id-user") == "staff-1"
    assert await page.inner_text("#id-role") == "staff"
    assert await page.inner_text("#id-shops") == "1"  # from the token's shop_ids claim
    assert re.search(r"\(in (59|60) min\)", await page.inner_text("#id-expires"))
    assert re.fullmatch(r"[\w-]{8,}", await page.inner_text("#id-socket"))  # a Socket.IO id
    assert not await page.is_visible("#identity-note")
    await page.fill("#token", "another.token.here")
    assert await page.is_visible("#identity-note")  # the form is not what the socket uses
    assert await page.inner_text("#id-user") == "staff-1"

    # rooms: those the gateway put it in on authentication, listed, not only in the JSON
    user_room = page.locator('#rooms li[data-room="user-staff-1"]')
    assert "by the gateway" in await user_room.inner_text()
    in_rooms = await attribute_of_all(ui, "#rooms li[data-room]", "room")
    offered = await attribute_of_all(ui, "#room-suggestions button", "room")
    assert "availability-1" in offered and "shop-1" in in_rooms + offered
    assert not {"shop-2", "availability-2", "admin-general"} & set(in_rooms + offered)
    assert await page.input_value("#bc-token") == ""  # an operator's token is never given

    # a suggestion joins at a click; a broadcast to it comes as one compact line
    await page.click('#room-suggestions button[data-room="availability-1"]')
    joined = await ui.logged("join availability-1")
    assert "ok, replayed 0" in await joined.inner_text()
    await page.wait_for_selector('#rooms li[data-room="availability-1"]', timeout=WAIT_MS)
    assert "availability-1" not in await attribute_of_all(ui, "#room-suggestions button", "room")
    event_id = await post_broadcast(base_url, {"title": "from the test"}, ["availability-1"])
    row = await ui.logged("notification", event_id)
    closed = await row.bounding_box()
    assert closed["height"] <= ROW_HEIGHT_MAX_PX
    assert '{"title":"from the test"}' in await row.inner_text()
    assert not await page.is_visible(f'#log li[data-event-id="{event_id}"] pre')
    await page.click(f'#log li[data-event-id="{event_id}"] summary')
    body = page.locator(f'#log li[data-event-id="{event_id}"] pre')
    assert await body.is_visible()
    payload = json.loads(await body.inner_text())
    assert payload["title"] == "from the test" and payload["eventId"] == event_id
    assert (await row.bounding_box())["height"] > closed["height"]
    await ui.screenshot("page-identity-and-rooms.png")
    assert ui.errors == []


async def test_pause_keeps_every_event_and_resume_shows_them_in_order_and_filter_hides(
    ui, base_url, token
):
    page = ui.page
    await open_as_staff_of_shop_1(ui, base_url, token, rooms="availability-1")
    await page.click("#pause")
    assert await page.get_attribute("#pause", "aria-pressed") == "true"
    titles = ["alpha", "bravo", "charlie", "delta", "echo"]
    sent = [await post_broadcast(base_url, {"title": t}, ["availability-1"]) for t in titles]
    # all five reached the page, and none is shown yet
    await page.wait_for_function(
        "document.getElementById('event-count').textContent === '5'", timeout=WAIT_MS
    )
    assert await page.inner_text("#held") == "5 held"
    assert await page.inner_text("#pause") == "resume (5)"
    assert await page.locator('#log li[data-event="notification"]').count() == 0
    await ui.screenshot("page-paused.png")

    await page.click("#pause")
    assert not await page.is_visible("#held")
    shown = await attribute_of_all(ui, '#log li[data-event="notification"]', "eventId")
    assert shown == sent[::-1]  # newest first: every one, in the order they came

    await page.fill("#log-filter", "charlie")
    visible = await attribute_of_all(ui, "#log > li:not([hidden])", "eventId")
    assert visible == [sent[2]]
    assert (await page.inner_text("#log-shown")).startswith("1 of ")
    await ui.screenshot("page-filtered.png")
    await page.fill("#log-filter", "NOTIFICATION")  # by name, whatever the case
    assert await attribute_of_all(ui, "#log > li:not([hidden])", "eventId") == sent[::-1]
    await page.fill("#log-filter", "")
    everything = await page.locator("#log > li").count()
    assert await page.locator("#log > li:not([hidden])").count() == everything > 5
    assert ui.errors == []


async def test_each_state_change_and_a_refused_join_are_logged_once(ui, base_url, token):
    page = ui.page
    await open_as_staff_of_shop_1(ui, base_url, token)
    # the library reports "connected" on connecting and again when its catch-up is done
    assert await attribute_of_all(ui, "#log li[data-state]", "state") == [
        "connected",
        "connecting",
    ]
    await page.fill("#room", "shop-2")  # not this staff member's shop
    await page.click("#join")
    await ui.logged("forbidden")
    # a join answered after the refusal: anything the refusal would log is logged by now
    await page.fill("#room", "availability-1")
    await page.click("#join")
    await ui.logged("join availability-1")
    failures = page.locator("#log li.failure")
    assert await failures.count() == 1
    assert await failures.get_attribute("data-rooms") == "shop-2"
    assert "join_room: not allowed to join 'shop-2'" in await failures.inner_text()
    assert await page.locator('#log li[data-event="join shop-2"]').count() == 0
    assert "shop-2" not in await attribute_of_all(ui, "#rooms li[data-room]", "room")

    await page.click("#disconnect")
    await ui.state("closed")
    assert await attribute_of_all(ui, "#log li[data-state]", "state") == [
        "closed",
        "connected",
        "connecting",
    ]
    assert "by you" in await page.inner_text('#log li[data-state="closed"]')
    assert await page.is_visible("#identity-none")  # nobody, once closed
    await ui.screenshot("page-logged-once.png")
    assert ui.errors == []


async def test_the_broadcast_box_sends_and_shows_the_answer_or_the_coded_error(ui, demo_url, token):
    page = ui.page
    await open_as_staff_of_shop_1(ui, demo_url, token, rooms="availability-1")
    # the demo's token, given to this browser because it runs on the gateway's machine
    await page.wait_for_selector("body[data-ready]")
    assert await page.input_value("#bc-token") == SERVICE_TOKEN
    assert await page.is_visible("#bc-token-note")
    await page.fill("#bc-rooms", "availability-1")
    await page.fill("#bc-data", '{"title": "from the box"}')
    await page.click("#bc-send")
    await page.wait_for_selector("#bc-result.ok", timeout=WAIT_MS)
    answer = await page.inner_text("#bc-result")
    event_id = re.fullmatch(r"202: eventId (\d+) to availability-1", answer).group(1)
    row = await page.wait_for_selector(
        f'#log li[data-event-id="{event_id}"][data-rooms="availability-1"]', timeout=WAIT_MS
    )
    assert "from the box" in await row.inner_text()
    # a room's name shows only its events: those whose room is known
    await page.click('#rooms li[data-room="availability-1"] button.room-name')
    assert await page.input_value("#log-filter") == "room:availability-1"
    assert await row.is_visible()
    assert not await page.is_visible('#log li[data-event="auth_success"]')
    await ui.screenshot("page-broadcast.png")

    await page.fill("#bc-token", "not-the-token")
    await page.click("#bc-send")
    await page.wait_for_selector("#bc-result.bad", timeout=WAIT_MS)
    assert (await page.inner_text("#bc-result")).startswith("401 unauthenticated: ")
    await page.fill("#bc-token", SERVICE_TOKEN)
    await page.fill("#bc-event", "reservation_update")  # not one services may send
    await page.click("#bc-send")
    await page.wait_for_function(
        "document.getElementById('bc-result').textContent.startsWith('400 invalid_payload')",
        timeout=WAIT_MS,
    )
    await page.fill("#bc-data", "{not json")
    await page.click("#bc-send")
    await page.wait_for_function(
        "document.getElementById('bc-result').textContent.startsWith('data is not JSON')",
        timeout=WAIT_MS,
    )
    assert await page.locator('#log li[data-event="notification"]').count() == 1
    await ui.screenshot("page-broadcast-refused.png")
    # Chromium reports the refused requests' statuses on the console; nothing else
    assert [e for e in ui.errors if "the server responded with a status of 40" not in e] == []
