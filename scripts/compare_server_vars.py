"""$_SERVER under nginx + php-fpm versus under the gateway, for the same requests.

Run through scripts/compare-server-vars (which installs nginx if missing).
Exit status 1 if a difference appears that the README does not document.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import uuid
from pathlib import Path

from _harness import REPO, Stack

# Differences the README documents (section "$_SERVER: differences from nginx").
DOCUMENTED = {
    "SERVER_SOFTWARE": "names the gateway instead of nginx/VERSION",
    "SERVER_PORT": "each server listens on its own port in this comparison",
    "HTTP_HOST": "carries each server's own port in this comparison",
    "REMOTE_PORT": "each request comes from its own client port",
    "PATH_TRANSLATED": "set with PATH_INFO (document root + PATH_INFO); Debian's nginx snippet never sets it",
}
# Per-request values that differ between any two requests.
VOLATILE = {"REQUEST_TIME", "REQUEST_TIME_FLOAT"}


def multipart() -> tuple[str, bytes]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    body += bytes(range(256)) * 40 + f"\r\n--{b}--\r\n".encode()
    return f"multipart/form-data; boundary={b}", body


REQUESTS = [
    ("GET with query", "GET", "/server.php?a=1&b=%C3%A9&c[]=x", {}, None),
    ("POST form", "POST", "/server.php", {"Content-Type": "application/x-www-form-urlencoded"}, b"x=1&y=two"),
    ("multipart upload", "POST", "/server.php", None, None),
    ("PATH_INFO", "GET", "/server.php/extra/path?q=1", {}, None),
    ("HEAD", "HEAD", "/server.php?h=1", {}, None),
    ("front controller", "GET", "/2024/01/pretty-permalink/?utm=1", {}, None),
    ("cookies and custom headers", "GET", "/server.php", {"Cookie": "a=1; b=2", "X-Custom-Header": "v",
                                                          "Accept-Language": "fr"}, None),
]


def fetch(port: int, method: str, target: str, headers: dict[str, str], body: bytes | None) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, target, body=body, headers={"User-Agent": "compare-server-vars", **headers})
    resp = conn.getresponse()
    resp.read()
    raw = resp.getheader("X-Server-Vars")
    conn.close()
    if raw is None:
        raise RuntimeError(f"{method} {target} on port {port}: status {resp.status}, no X-Server-Vars header")
    return json.loads(base64.b64decode(raw))


def main() -> int:
    docroot = REPO / "demo"
    # The front-controller case needs index.php to dump $_SERVER too: use a temp docroot.
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cmp-root-"))
    root.chmod(0o755)
    shutil.copy(docroot / "server.php", root / "server.php")
    shutil.copy(docroot / "server.php", root / "index.php")
    undocumented = 0
    try:
        with Stack(root, workers=2) as stack:
            print(f"nginx on :{stack.nginx_port}, gateway on :{stack.gateway_port}, php-fpm at {stack.fpm_socket}\n")
            for title, method, target, headers, body in REQUESTS:
                if headers is None:
                    ctype, body = multipart()
                    headers = {"Content-Type": ctype}
                a = fetch(stack.nginx_port, method, target, headers, body)
                b = fetch(stack.gateway_port, method, target, headers, body)
                keys = sorted((set(a) | set(b)) - VOLATILE)
                diffs = [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
                print(f"== {title}: {method} {target}  ({len(keys)} variables)")
                for k, va, vb in diffs:
                    why = DOCUMENTED.get(k)
                    mark = "documented" if why else "UNDOCUMENTED"
                    if not why:
                        undocumented += 1
                    print(f"   {k}: nginx={va!r} gateway={vb!r}  [{mark}{': ' + why if why else ''}]")
                if not diffs:
                    print("   identical")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{undocumented} undocumented difference(s)")
    return 1 if undocumented else 0


if __name__ == "__main__":
    sys.exit(main())
