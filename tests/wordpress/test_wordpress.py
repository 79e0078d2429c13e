"""WordPress end to end through the gateway: Debian's wordpress package on a
real MariaDB, a php-fpm the gateway spawns, everything over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import uuid
import zlib


def png(width: int = 3, height: int = 2) -> bytes:
    """A small valid PNG, made here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(  # one filter byte per row, then RGB pixels
        b"\x00" + b"".join(bytes([(x * 80) % 256, (y * 120) % 256, 200]) for x in range(width))
        for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


async def publish(browser, title: str, content: str = "Hello from the gateway test.") -> dict:
    nonce = await browser.rest_nonce()
    r = await browser.request("POST", "/wp-json/wp/v2/posts",
                              [("Content-Type", "application/json"), ("X-WP-Nonce", nonce)],
                              json.dumps({"title": title, "content": content, "status": "publish"}).encode())
    assert r.status == 201, r.body[:500]
    return json.loads(r.body)


async def test_home_page_renders(browser):
    r = await browser.get("/")
    assert r.status == 200
    assert r.header("content-type") == "text/html; charset=UTF-8"
    assert b"Gateway test blog" in r.body


async def test_login_and_dashboard(browser):
    r = await browser.login()
    assert r.status == 302 and r.header("location").endswith("/wp-admin/")
    assert any(k.startswith("wordpress_logged_in_") for k in browser.cookies)
    r = await browser.get("/wp-admin/")
    assert r.status == 200 and b"Dashboard" in r.body


async def test_wp_admin_without_slash_redirects_and_needs_login(browser):
    r = await browser.get("/wp-admin")
    assert r.status == 301 and r.header("location") == f"http://{browser.host}/wp-admin/"
    r = await browser.get("/wp-admin/")
    assert r.status == 302 and "wp-login.php" in r.header("location")


async def test_publish_and_view_at_pretty_permalink_with_canonical_redirect(browser):
    await browser.login()
    post = await publish(browser, "Gateway pretty permalink")
    link = post["link"]
    assert link == f"http://{browser.host}/gateway-pretty-permalink/"
    r = await browser.get("/gateway-pretty-permalink/")
    assert r.status == 200 and b"Gateway pretty permalink" in r.body
    r = await browser.get("/gateway-pretty-permalink")
    assert r.status == 301 and r.header("location") == link


async def test_search_feed_404_and_rest_index(browser):
    await browser.login()
    await publish(browser, "Searchable gateway words", "zebracornflower text")
    r = await browser.get("/?s=zebracornflower")
    assert r.status == 200 and b"Searchable gateway words" in r.body
    r = await browser.get("/feed/")
    assert r.status == 200 and r.header("content-type").startswith("application/rss+xml")
    assert b"<rss" in r.body
    r = await browser.get("/no-such-slug-anywhere/")
    assert r.status == 404
    r = await browser.get("/wp-json/")
    assert r.status == 200 and json.loads(r.body)["name"] == "Gateway test blog"


async def test_upload_through_async_upload_and_fetch_back(browser):
    await browser.login()
    r = await browser.get("/wp-admin/media-new.php")
    assert r.status == 200
    nonce = re.search(rb'name="_wpnonce" value="([0-9a-f]+)"', r.body).group(1).decode()
    image = png(5, 4)
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\ngateway-upload.png\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="action"\r\n\r\nupload-attachment\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="_wpnonce"\r\n\r\n{nonce}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="async-upload"; filename="gateway-upload.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    r = await browser.request("POST", "/wp-admin/async-upload.php",
                              [("Content-Type", f"multipart/form-data; boundary={boundary}")], body)
    assert r.status == 200, r.body[:500]
    data = json.loads(r.body)
    assert data["success"], data
    url = data["data"]["url"]
    got = await browser.get(url)
    assert got.status == 200 and got.header("content-type") == "image/png"
    assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(image).hexdigest()
    assert got.header("cache-control") == "max-age=31536000" and got.header("expires")


async def test_upload_raw_body_through_rest_media(browser):
    await browser.login()
    nonce = await browser.rest_nonce()
    image = png(7, 3)
    r = await browser.request("POST", "/wp-json/wp/v2/media",
                              [("Content-Type", "image/png"), ("X-WP-Nonce", nonce),
                               ("Content-Disposition", 'attachment; filename="rest-upload.png"')], image)
    assert r.status == 201, r.body[:500]
    url = json.loads(r.body)["source_url"]
    got = await browser.get(url)
    assert got.status == 200 and got.body == image and got.header("content-type") == "image/png"


async def test_post_a_comment(browser):
    await browser.login()
    post = await publish(browser, "Commentable gateway post")
    visitor = type(browser)(browser.port)
    form = (f"comment=Nice+post+from+a+visitor&author=Visitor&email=visitor%40example.com&url="
            f"&comment_post_ID={post['id']}&comment_parent=0")
    r = await visitor.request("POST", "/wp-comments-post.php",
                              [("Content-Type", "application/x-www-form-urlencoded")], form.encode())
    assert r.status == 302 and "#comment-" in r.header("location")
    r = await visitor.get("/commentable-gateway-post/")
    assert b"Nice post from a visitor" in r.body


async def test_php_never_runs_in_uploads_and_config_is_never_served(browser, wordpress):
    evil = wordpress.content_dir / "uploads" / "evil.php"
    evil.write_text("<?php echo 'ran';")
    r = await browser.get("/wp-content/uploads/evil.php")
    assert r.status == 403 and b"ran" not in r.body
    assert (await browser.get("/wp-config.php")).status == 403
    assert (await browser.get("/.htaccess")).status == 403


async def test_theme_static_assets_are_served_with_long_cache(browser):
    r = await browser.get("/wp-content/themes/twentytwentythree/style.css")
    assert r.status == 200 and r.header("content-type") == "text/css"
    assert r.header("cache-control") == "max-age=31536000"
    r = await browser.get("/wp-includes/js/jquery/jquery.min.js")
    assert r.status == 200 and r.header("content-type") == "application/javascript"
