#!/usr/bin/env python3
"""Two people use Confab's web client in two headless Chromiums.

Run by tests/integration/browser.rs against a live server:
    web_client.py BASE_URL ARTIFACTS_DIR
It drives Debian's chromium through its chromedriver (Selenium, nothing
downloaded: the driver's path is given), keeps a screenshot of each step
in ARTIFACTS_DIR, and exits non-zero with the failed step on stderr.

Steps: alice and bob sign up; alice opens a dm with bob and writes; it
arrives live in bob's list with an unread badge; bob opens it and alice's
ticks turn to read; bob answers live; alice sends an image and both see
its thumbnail; bob searches and sees the match highlighted; bob goes away,
alice writes twice, bob comes back and catches up, and alice sees read.
"""

import os
import shutil
import struct
import sys
import tempfile
import time
import zlib

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BASE = sys.argv[1].rstrip("/")
ARTIFACTS = sys.argv[2]
WAIT = float(os.environ.get("CONFAB_BROWSER_WAIT_SECS", "20"))
os.makedirs(ARTIFACTS, exist_ok=True)

step_number = 0
browsers = {}


def find_binary(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"):
        if os.path.basename(path) in names and os.path.exists(path):
            return path
    sys.exit(f"none of {names} is installed: tests/run installs Debian's chromium and chromium-driver")


CHROMIUM = find_binary("chromium", "chromium-browser")
DRIVER = find_binary("chromedriver")


def browser(name):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix=f"confab-{name}-")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--user-data-dir={profile}", "--window-size=1200,850", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    browsers[name] = driver
    return driver


def shot(name):
    global step_number
    step_number += 1
    for who, driver in browsers.items():
        driver.save_screenshot(os.path.join(ARTIFACTS, f"{step_number:02d}-{name}-{who}.png"))


def until(driver, what, condition):
    try:
        # The page re-renders lists as events arrive: an element read while
        # it is replaced is stale, which means "look again", not failure.
        wait = WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(lambda d: condition(d))
    except TimeoutException:
        fail(f"waited {WAIT:.0f} s for {what}")


def fail(message):
    shot("failed")
    for who, driver in browsers.items():
        try:
            logs = driver.get_log("browser")
            for entry in logs:
                print(f"[{who} console] {entry.get('level')} {entry.get('message')}", file=sys.stderr)
        except Exception:
            pass
    print(f"FAILED at step {step_number + 1}: {message}", file=sys.stderr)
    for driver in browsers.values():
        driver.quit()
    sys.exit(1)


def visible(driver, element_id):
    element = driver.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


def sign_up(driver, username, password):
    driver.get(BASE + "/")
    until(driver, "the sign-up form", lambda d: visible(d, "signup-form"))
    driver.find_element(By.ID, "signup-username").send_keys(username)
    driver.find_element(By.ID, "signup-password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#signup-form button[type=submit]").click()
    until(driver, f"{username} to be signed in and connected",
          lambda d: visible(d, "chat") and d.find_element(By.ID, "connection").text == "online")


def conversation_button(driver):
    buttons = driver.find_elements(By.CSS_SELECTOR, "#conversations button.conversation")
    return buttons[0] if buttons else None


def message_bodies(driver):
    # Read in one script, so the list cannot change between the nodes.
    return driver.execute_script("return [...document.querySelectorAll('#messages li.message .body')].map((node) => node.innerText)")


def send(driver, text):
    box = driver.find_element(By.ID, "composer-body")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def statuses(driver):
    return driver.execute_script("return [...document.querySelectorAll('#messages li.mine .ticks')].map((node) => node.dataset.status)")


def png(width, height):
    """A small RGB PNG: a gradient, so a thumbnail of it is not blank."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 128)) for x in range(width)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


alice = browser("alice")
bob = browser("bob")

# 1. Both sign up (and are logged in and connected).
sign_up(alice, "alice", "correct horse")
sign_up(bob, "bob", "correct horse")
shot("signed-up")

# 2. Alice opens a dm with bob and writes.
alice.find_element(By.CSS_SELECTOR, "#new-conversation summary").click()
alice.find_element(By.ID, "new-type").send_keys("Direct message")
alice.find_element(By.ID, "new-members").send_keys("bob")
alice.find_element(By.CSS_SELECTOR, "#new-form button[type=submit]").click()
until(alice, "the dm to open", lambda d: visible(d, "conversation") and d.find_element(By.ID, "conversation-title").text == "bob")
send(alice, "hello bob, are you there?")
until(alice, "the message to be sent (one tick)", lambda d: statuses(d) == ["sent"] or statuses(d) == ["delivered"])

# 3. It reaches bob live: the dm appears in his list with one unread.
until(bob, "the dm in bob's list with an unread badge",
      lambda d: conversation_button(d) and "alice" in conversation_button(d).text and conversation_button(d).find_elements(By.CSS_SELECTOR, ".badge"))
if conversation_button(bob).find_element(By.CSS_SELECTOR, ".badge").text != "1":
    fail("bob's unread badge is not 1")
until(alice, "alice's tick to turn to delivered (bob's device got it)", lambda d: statuses(d) == ["delivered"])
shot("delivered")

# 4. Bob opens it; alice's tick turns to read.
conversation_button(bob).click()
until(bob, "alice's message in bob's view", lambda d: message_bodies(d) == ["hello bob, are you there?"])
until(alice, "alice's tick to turn to read", lambda d: statuses(d) == ["read"])
if conversation_button(bob).find_elements(By.CSS_SELECTOR, ".badge"):
    fail("bob's unread badge stayed after reading")
shot("read")

# 5. Bob answers; alice sees it live, with typing first.
bob.find_element(By.ID, "composer-body").send_keys("yes")
until(alice, "bob typing", lambda d: "typing" in d.find_element(By.ID, "typing").text)
bob.find_element(By.ID, "composer-body").send_keys(", here!" + Keys.ENTER)
until(alice, "bob's answer in alice's view", lambda d: message_bodies(d)[-1:] == ["yes, here!"])
shot("answered")

# 6. Alice sends an image; both see its thumbnail once it is checked.
image = os.path.join(ARTIFACTS, "gradient.png")
with open(image, "wb") as file:
    file.write(png(320, 200))
alice.find_element(By.ID, "composer-file").send_keys(image)
send(alice, "a picture")


def thumbnail_loaded(driver):
    images = driver.find_elements(By.CSS_SELECTOR, "#messages img.thumbnail")
    return images and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", images[-1])


until(alice, "the thumbnail in alice's view", thumbnail_loaded)
until(bob, "the thumbnail in bob's view", thumbnail_loaded)
shot("image")

# 7. Bob searches; the match is highlighted.
bob.find_element(By.ID, "search-q").send_keys("hello" + Keys.ENTER)
until(bob, "a search result", lambda d: d.find_elements(By.CSS_SELECTOR, "#result-list mark"))
marks = [mark.text.lower() for mark in bob.find_elements(By.CSS_SELECTOR, "#result-list mark")]
if marks != ["hello"]:
    fail(f"highlights are {marks}, not ['hello']")
shot("search")
bob.find_element(By.ID, "search-close").click()

# 8. Bob goes away; alice writes; bob comes back and catches up.
bob.get("about:blank")
until(alice, "bob to be offline for alice", lambda d: "last seen" in d.find_element(By.ID, "conversation-presence").text)
send(alice, "while you were away")
send(alice, "and one more")
until(alice, "both to be sent", lambda d: statuses(d)[-2:] == ["sent", "sent"])
shot("away")
bob.get(BASE + "/")
until(bob, "bob back, signed in from his saved session", lambda d: visible(d, "chat") and d.find_element(By.ID, "connection").text == "online")
until(bob, "two unread in bob's list", lambda d: conversation_button(d) and [b.text for b in conversation_button(d).find_elements(By.CSS_SELECTOR, ".badge")] == ["2"])
conversation_button(bob).click()
until(bob, "the missed messages, in order, once each",
      lambda d: message_bodies(d) == ["hello bob, are you there?", "yes, here!", "a picture", "while you were away", "and one more"])
until(alice, "alice's last ticks to turn to read", lambda d: statuses(d)[-2:] == ["read", "read"])
shot("caught-up")

for driver in browsers.values():
    driver.quit()
print(f"ok: {step_number} steps, screenshots in {ARTIFACTS}")
