"""Crawl a WordPress install through nginx + php-fpm and through the gateway,
and compare what matters: status, Location, Content-Type, Set-Cookie names and
caching headers. One MariaDB + WordPress (Debian's package), one php-fpm pool
shared by both front ends. Differences are listed with their explanation;
undocumented ones make the script fail.

Run through scripts/wordpress-parity (installs what is missing).
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import tempfile
from pathlib import Path

from _harness import NGINX_PHP_LOCATIONS, REPO, Stack

sys.path.insert(0, str(REPO))
from tests.wordpress.wp_parts import WP_CORE, start_wordpress, wordpress_site_config  # noqa: E402

# Differences explained in README ("WordPress: parity with nginx").
DOCUMENTED: dict[str, str] = {}

URLS = [
    "/", "/hello-world/", "/hello-world", "/?p=1", "/sample-page/", "/feed/", "/comments/feed/", "/?s=hello",
    "/wp-json/", "/wp-json/wp/v2/posts", "/no-such-page/", "/wp-admin", "/wp-admin/", "/wp-login.php",
    "/wp-content/themes/twentytwentythree/style.css", "/wp-includes/js/jquery/jquery.min.js",
    "/wp-includes/css/dist/block-library/style.min.css", "/wp-config.php", "/.htaccess", "/readme.html",
    "/xmlrpc.php", "/robots.txt", "/wp-sitemap.xml", "/wp-content/uploads/evil.php", "/index.php/hello-world/",
    "/wp-content/themes/twentytwentythree/no-such.css", "/wp-cron.php",
]
CACHE_EXT = "css|js|mjs|png|jpg|jpeg|gif|webp|avif|svg|ico|woff|woff2|ttf|eot|otf|mp4|webm|mp3|ogg|pdf"


def nginx_locations(content: str, config_name: str, fastcgi_extra: str = "") -> str:
    php = NGINX_PHP_LOCATIONS.format(fastcgi_extra=f"fastcgi_param WORDPRESS_CONFIG {config_name};{fastcgi_extra}")
    return php + f"""
        location ^~ /wp-content/uploads/ {{
            alias {content}/uploads/;
            location ~ \\.php$ {{ deny all; }}
            expires 365d;
        }}
        location ^~ /wp-content/ {{
            alias {content}/;
            location ~ \\.php$ {{ deny all; }}
            location ~* \\.({CACHE_EXT})$ {{ expires 365d; }}
        }}
        location = /wp-config.php {{ deny all; }}
        location = /wp-config-sample.php {{ deny all; }}
        location ~ /\\.(?!well-known) {{ deny all; }}
        location ~* \\.({CACHE_EXT})$ {{ expires 365d; try_files $uri =404; }}
"""


def gateway_site(content: str, config_name: str) -> str:
    site = wordpress_site_config(str(WP_CORE), content, params={"WORDPRESS_CONFIG": config_name})
    lines = ["[sites.wordpress]", 'server_names = ["localhost"]']
    for key, value in site.items():
        if isinstance(value, dict):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[sites.wordpress.aliases]")
    lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in site["aliases"].items()]  # type: ignore[union-attr]
    lines.append("[sites.wordpress.params]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in site["params"].items()]  # type: ignore[union-attr]
    return "\n".join(lines) + "\n"


def fetch(port: int, url: str) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", url, headers={"Host": "localhost", "User-Agent": "wordpress-parity"})
    r = conn.getresponse()
    r.read()
    conn.close()
    cookies = sorted({re.split(r"=", v, maxsplit=1)[0] for k, v in r.getheaders() if k.lower() == "set-cookie"})
    loc = r.getheader("Location")
    return {
        "status": r.status,
        "location": re.sub(r"//localhost(:\d+)?", "//HOST", loc) if loc else None,
        "content-type": r.getheader("Content-Type"),
        "set-cookie": cookies,
        "cache-control": r.getheader("Cache-Control"),
        "expires": "yes" if r.getheader("Expires") else None,
    }


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="wp-parity-"))
    wp = start_wordpress(base / "wp")
    (wp.content_dir / "uploads" / "evil.php").write_text("<?php echo 'ran';")
    undocumented = 0
    try:
        with Stack(WP_CORE, workers=4, nginx_locations=nginx_locations(str(wp.content_dir), wp.config_name),
                   gateway_site=gateway_site(str(wp.content_dir), wp.config_name), run_as="root") as stack:
            print(f"nginx :{stack.nginx_port}  gateway :{stack.gateway_port}  (Host: localhost)\n")
            print(f"{'URL':52} {'nginx':>5} {'gw':>5}  differences")
            for url in URLS:
                a, b = fetch(stack.nginx_port, url), fetch(stack.gateway_port, url)
                diffs = []
                for key in a:
                    if a[key] != b[key]:
                        why = DOCUMENTED.get(key)
                        if not why:
                            undocumented += 1
                        diffs.append(f"{key}: nginx={a[key]!r} gateway={b[key]!r}"
                                     + (" [documented]" if why else " [UNDOCUMENTED]"))
                print(f"{url:52} {a['status']:>5} {b['status']:>5}  " + ("; ".join(diffs) or "same"))
    finally:
        wp.stop()
    print("\nDocumented differences:")
    for key, why in DOCUMENTED.items():
        if why:
            print(f"  {key}: {why}")
    print(f"\n{undocumented} undocumented difference(s)")
    return 1 if undocumented else 0


if __name__ == "__main__":
    sys.exit(main())
