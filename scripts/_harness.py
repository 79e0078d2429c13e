"""Start php-fpm, nginx and the gateway side by side on 127.0.0.1 for comparisons.

Used by scripts/compare-server-vars (and later benchmarks). Every process is
started here and stopped here, by pid.

A second gateway, an older version's source tree (``baseline``), can run beside
this checkout's on the same php-fpm pool: same interpreter and venv, with
``PYTHONPATH`` and the working directory set to that tree so its ``gateway``
and ``fastcgi`` packages shadow the editable install. Its configuration uses
the names every version since the start knows (``[server] workers``,
``[backends.X] workers``); this checkout's uses today's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.config import BackendConfig, PhpFpmConfig  # noqa: E402
from gateway.serve.php_fpm import find_php_fpm, write_pool_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


NGINX_CONF = """
daemon off;
worker_processes {processes};
user {nginx_user};
pid {run}/nginx.pid;
error_log {run}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    client_body_temp_path {run}/body;
    fastcgi_temp_path {run}/fastcgi;
    proxy_temp_path {run}/proxy;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    client_max_body_size 64m;
    {extra}
    upstream php {{ server unix:{sock}; keepalive {keepalive}; keepalive_timeout {idle}ms; }}
    server {{
        listen 127.0.0.1:{port};
        {tls}
        server_name localhost;
        root {root};
        index index.php index.html;
        {locations}
    }}
}}
"""

NGINX_PHP_LOCATIONS = """
        location / {{ try_files $uri $uri/ /index.php?$args; }}
        location ~ [^/]\\.php(/|$) {{
            fastcgi_split_path_info ^(.+?\\.php)(/.*)$;
            if (!-f $document_root$fastcgi_script_name) {{ return 404; }}
            include /etc/nginx/fastcgi.conf;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            {fastcgi_extra}
            fastcgi_keep_conn on;
            fastcgi_pass php;
        }}
"""


CADDYFILE = """
{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    root * {root}
    php_fastcgi unix/{sock}
    file_server
}}
"""

CADDY_TLS_SITE = """
https://127.0.0.1:{port} {{
    tls {cert} {key}
    root * {root}
    php_fastcgi unix/{sock}
    file_server
}}
"""


def cpu_dirs(prefix: str, files: dict[str, str] | None = None) -> tuple[Path, Path]:
    """The document root and run directory of scripts/path-cpu and
    scripts/h2-cpu: hello.php, 1k.txt and a 50 KB page.php (plus ``files``),
    readable by php-fpm's worker user."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-root-"))
    run = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    for d in (root, run):
        d.chmod(0o755)
    (root / "hello.php").write_text("<?php echo 'hello';\n")
    (root / "1k.txt").write_bytes(b"x" * 1024)
    (root / "page.php").write_text("<?php header('Content-Type: text/html; charset=UTF-8');\n"
                                   "echo str_repeat('<p>cached page</p>', 2800);\n")
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    for f in root.iterdir():
        f.chmod(0o644)
    return root, run


def print_cpu_table(results: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    """The CPU-per-request table of scripts/path-cpu and scripts/h2-cpu: per
    (path, gateway) the median and least CPU µs per request, the median req/s."""
    print(f"{'path':7} {'gateway':9} {'CPU µs/req':>10} {'(min)':>6} {'req/s':>8}")
    for (name, label), runs in results.items():
        print(f"{name:7} {label:9} {statistics.median(u for u, _ in runs):10.0f} {min(u for u, _ in runs):6.0f} "
              f"{statistics.median(r for _, r in runs):8.0f}")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 (what
    every server of a comparison is given), as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o644)  # nginx's and Caddy's workers read it; a throw-away test key
    return cert_path, key_path


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _knows_server_user(tree: Path) -> bool:
    """Does the gateway in ``tree`` have ``[server] user``? A version that has
    it drops root for www-data unless told ``user = "root"`` (the WordPress
    rows' files and php-fpm socket are root's); an older one refuses the key."""
    source = tree / "gateway" / "config" / "__init__.py"
    return source.exists() and "\n    user: str" in source.read_text()


class Stack:
    """php-fpm (one pool) + nginx + the gateway (+ Caddy), all on 127.0.0.1."""

    def __init__(self, root: Path, workers: int = 4, gateway_pool_size: int | None = None, *,
                 nginx_http_extra: str = "", gateway_extra: str = "", nginx_locations: str | None = None,
                 gateway_site: str | None = None, run_as: str = "www-data", idle_timeout: float = 10.0,
                 processes: int = 1, caddy: bool = False, php_admin_values: dict[str, str] | None = None,
                 baseline: Path | None = None, tls: bool = False, reuseport: bool = False) -> None:
        """``nginx_http_extra``: directives added to nginx's http block;
        ``gateway_extra``: TOML added to the gateway's configuration;
        ``nginx_locations`` / ``gateway_site``: replace nginx's PHP locations and
        the gateway's [sites.cmp] table; ``run_as``: php-fpm's and nginx's worker user;
        ``workers``: php-fpm's pm.max_children; ``gateway_pool_size``: the
        gateway's pool (default: ``workers``);
        ``processes``: nginx's worker_processes and the gateway's [server] processes;
        ``caddy``: also start Caddy (Debian's; php_fastcgi + file_server, its defaults);
        ``baseline``: also start the gateway whose source tree is there (see the module
        docstring) on ``baseline_port``, its pid in ``baseline_pid``;
        ``tls``: each server (not the baseline) also serves HTTPS with one
        certificate (``make_certificate``) on its ``tls_ports[server]``;
        ``reuseport``: the gateway's listen entries (not the baseline's) get
        the ``reuseport`` flag (a socket per process)."""
        self.processes = processes
        self.reuseport = reuseport
        self.php_admin_values = php_admin_values or {}
        self.caddy = caddy
        self.caddy_port = free_port() if caddy else 0
        self.root = root
        self.nginx_locations = nginx_locations or NGINX_PHP_LOCATIONS.format(fastcgi_extra="")
        self.gateway_site = gateway_site
        self.run_as = run_as
        self.idle_timeout = idle_timeout
        self.nginx_http_extra = nginx_http_extra
        self.gateway_extra = gateway_extra
        self.workers = workers
        self.gateway_pool_size = gateway_pool_size or workers
        self.run = Path(tempfile.mkdtemp(prefix="gateway-compare-"))
        os.chmod(self.run, 0o755)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nginx_port = free_port()
        self.gateway_port = free_port()
        self.baseline = baseline
        self.baseline_port = free_port() if baseline else 0
        servers = ["nginx", "gateway"] + (["caddy"] if caddy else [])
        self.tls_ports: dict[str, int] = {server: free_port() for server in servers} if tls else {}

    def __enter__(self) -> Stack:
        # `timeout 600 scripts/bench ...` ends us with SIGTERM: leave through
        # __exit__, which stops the php-fpm, nginx, Caddy and gateways we started
        # (they were left running, php-fpm orphaned, when the process just died)
        signal.signal(signal.SIGTERM, _exit_on_term)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        user = self.run_as if os.geteuid() == 0 else ""
        paths = write_pool_config("cmp", BackendConfig(pool_size=self.workers, php_fpm=PhpFpmConfig(
                                      user=user, max_requests=0, php_admin_values=self.php_admin_values)),
                                  str(self.run / "fpm"))
        os.chmod(paths.directory, 0o755)
        argv = [find_php_fpm(), "-F", "-y", paths.config] + (["-R"] if os.geteuid() == 0 else [])
        self.procs.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(paths.socket), what="php-fpm")
        self.fpm_socket = paths.socket
        for d in ("body", "fastcgi", "proxy", "uwsgi", "scgi"):
            (self.run / d).mkdir()
        self.cert = self.key = None
        nginx_tls = ""
        if self.tls_ports:
            self.cert, self.key = make_certificate(self.run)
            nginx_tls = (f"listen 127.0.0.1:{self.tls_ports['nginx']} ssl http2; ssl_certificate {self.cert}; "
                         f"ssl_certificate_key {self.key};")
        conf = self.run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=self.run, sock=paths.socket, port=self.nginx_port, root=self.root,
                                          workers=self.workers, extra=self.nginx_http_extra,
                                          keepalive=max(1, self.workers // self.processes),
                                          nginx_user=self.run_as or "www-data", locations=self.nginx_locations,
                                          idle=int(self.idle_timeout * 1000), processes=self.processes,
                                          tls=nginx_tls))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.procs.append(subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL))
        wait_for(lambda: port_open(self.nginx_port), what="nginx")
        if self.caddy:
            caddyfile = CADDYFILE.format(port=self.caddy_port, root=self.root, sock=paths.socket)
            if self.tls_ports:
                caddyfile += CADDY_TLS_SITE.format(port=self.tls_ports["caddy"], cert=self.cert, key=self.key,
                                                   root=self.root, sock=paths.socket)
            (self.run / "Caddyfile").write_text(caddyfile)
            env = {**os.environ, "XDG_DATA_HOME": str(self.run / "caddy"), "XDG_CONFIG_HOME": str(self.run / "caddy"),
                   "HOME": str(self.run)}
            self.procs.append(subprocess.Popen(["caddy", "run", "--config", str(self.run / "Caddyfile"),
                                                "--adapter", "caddyfile"], env=env, stderr=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL))
            wait_for(lambda: port_open(self.caddy_port), what="caddy")
        self.gateway_pid = self._start_gateway(self.run / "conf.d", self.gateway_port, REPO, old_names=False)
        if self.baseline:
            self.baseline_pid = self._start_gateway(self.run / "conf-baseline.d", self.baseline_port, self.baseline,
                                                    old_names=True)

    def _start_gateway(self, confd: Path, port: int, tree: Path, *, old_names: bool) -> int:
        """Start the gateway whose ``gateway`` package is in ``tree`` on ``port``;
        ``old_names``: write ``workers``, not ``processes`` / ``pool_size``."""
        confd.mkdir()
        processes, pool_size = ("workers", "workers") if old_names else ("processes", "pool_size")
        tls = not old_names and "gateway" in self.tls_ports
        flags = " reuseport" if self.reuseport and not old_names else ""
        listen = f'"127.0.0.1:{port}{flags}"' + (f', "127.0.0.1:{self.tls_ports["gateway"]} tls{flags}"' if tls else "")
        site_tls = f'[sites.cmp.tls]\ncert = "{self.cert}"\nkey = "{self.key}"\n' if tls else ""
        (confd / "00.toml").write_text(
            f'[server]\nlisten = [{listen}]\naccess_log = "off"\n'
            + ('user = "root"\n' if _knows_server_user(tree) else '')
            + f'{processes} = {self.processes}\n'
            f'[backends.php]\naddress = "unix:{self.fpm_socket}"\n{pool_size} = {self.gateway_pool_size}\n'
            f'idle_timeout = "{self.idle_timeout}s"\n'
            f'[admin]\nlisten = "off"\n'
            + (self.gateway_site or
               f'[sites.cmp]\nserver_names = ["localhost"]\nroot = "{self.root}"\nphp = "php"\n{site_tls}')
            + self.gateway_extra
        )
        env = None
        if tree != REPO:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            if os.environ.get("GATEWAY_H11") == "h11":
                # a tree from before GATEWAY_H11 used h11_mypyc wherever it was installed: hide it
                hide = self.run / "hide-h11-mypyc"
                hide.mkdir(exist_ok=True)
                (hide / "h11_mypyc.py").write_text("raise ImportError('hidden: GATEWAY_H11=h11')\n")
                env["PYTHONPATH"] = f"{tree}{os.pathsep}{hide}"
            # `python -m` puts the working directory first on sys.path: run from the tree, and check
            # that its packages, not the editable install's, are the ones imported
            imported = subprocess.run([sys.executable, "-c", "import fastcgi, gateway; print(gateway.__file__); "
                                       "print(fastcgi.__file__)"], cwd=tree, env=env, capture_output=True,
                                      text=True, check=True, timeout=30).stdout.split()
            print(f"baseline gateway runs {imported[0]} and {imported[1]}", file=sys.stderr)
            if not all(Path(f).is_relative_to(tree) for f in imported):
                raise RuntimeError(f"the baseline would import {imported}, not the tree in {tree}")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(confd),
                                            "--log-level", "warning"], cwd=tree, env=env))
        wait_for(lambda: port_open(port), what=f"the gateway from {tree}")
        return self.procs[-1].pid

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if "gateway" in " ".join(map(str, proc.args)) else signal.SIGQUIT)
        for proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.run, ignore_errors=True)
