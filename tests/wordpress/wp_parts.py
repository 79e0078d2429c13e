"""Real WordPress parts for tests and scripts: a private MariaDB and a Debian
WordPress install configured per test session.

Debian's wordpress package keeps core in /usr/share/wordpress and reads
/etc/wordpress/config-NAME.php, where NAME comes from the WORDPRESS_CONFIG
FastCGI param (which a client can never set). A session writes its own
config-gwtest-<random>.php there and removes it afterwards; its wp-content
(uploads) lives in a temp dir, with Debian's theme linked in.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WP_CORE = Path("/usr/share/wordpress")
WP_THEMES = WP_CORE / "wp-content" / "themes"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "gateway-test-password"


class WordPressPartsMissing(RuntimeError):
    pass


@dataclass
class WordPress:
    base: Path
    config_name: str
    config_file: Path
    content_dir: Path
    db_socket: Path
    mariadb: subprocess.Popen[bytes]

    def site_config(self) -> dict[str, object]:
        """The gateway's [sites.X] table for this install (Debian layout)."""
        return wordpress_site_config(str(WP_CORE), str(self.content_dir), params={"WORDPRESS_CONFIG": self.config_name})

    def stop(self) -> None:
        try:
            self.config_file.unlink()
        except FileNotFoundError:
            pass
        self.mariadb.terminate()
        try:
            self.mariadb.wait(20)
        except subprocess.TimeoutExpired:
            self.mariadb.kill()
            self.mariadb.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def wordpress_site_config(root: str, content_dir: str | None = None, *, params: dict[str, str] | None = None
                          ) -> dict[str, object]:
    """The site table the README recommends for WordPress, as a dict."""
    site: dict[str, object] = {
        "root": root,
        "php": "php",
        "default": True,
        "no_php_under": ["/wp-content/uploads/"],
        "deny": ["/wp-config.php", "/wp-config-sample.php"],
        "static_max_age": "365d",
    }
    if content_dir:
        site["aliases"] = {"/wp-content/": content_dir}
    if params:
        site["params"] = params
    return site


def _need(binary: str) -> str:
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin")
    if not path:
        raise WordPressPartsMissing(f"{binary} is not installed: run scripts/setup --test")
    return path


def start_wordpress(base: Path) -> WordPress:
    """Start MariaDB on a private datadir and socket, install WordPress into it."""
    if not (WP_CORE / "wp-settings.php").exists():
        raise WordPressPartsMissing("Debian's wordpress package is not installed: run scripts/setup --test")
    base.mkdir(parents=True, exist_ok=True)
    datadir, sock = base / "db", base / "db.sock"
    subprocess.run([_need("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}", "--user=root",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)
    mariadb = subprocess.Popen([_need("mariadbd"), "--no-defaults", f"--datadir={datadir}", f"--socket={sock}",
                                "--skip-networking", "--user=root", f"--pid-file={base / 'db.pid'}",
                                f"--log-error={base / 'db.log'}", "--innodb-buffer-pool-size=32M"])
    deadline = time.monotonic() + 30
    while not sock.exists():
        if mariadb.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("MariaDB did not start: " + (base / "db.log").read_text(errors="replace")[-2000:])
        time.sleep(0.05)
    db_password = secrets.token_hex(12)
    subprocess.run([_need("mariadb"), "--no-defaults", "-S", str(sock), "-u", "root", "-e",
                    "CREATE DATABASE wp; "
                    f"CREATE USER 'wp'@'localhost' IDENTIFIED BY '{db_password}'; "
                    "GRANT ALL ON wp.* TO 'wp'@'localhost';"], check=True, capture_output=True)
    content = base / "wp-content"
    for sub in ("themes", "plugins", "uploads", "languages"):
        (content / sub).mkdir(parents=True, exist_ok=True)
    for theme in WP_THEMES.iterdir():
        (content / "themes" / theme.name).symlink_to(theme)
    name = "gwtest-" + secrets.token_hex(4)
    config = Path("/etc/wordpress") / f"config-{name}.php"
    salts = "".join(f"define('{k}', '{secrets.token_hex(32)}');\n" for k in (
        "AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT", "SECURE_AUTH_SALT",
        "LOGGED_IN_SALT", "NONCE_SALT"))
    config.write_text(
        "<?php\n// written by the gateway's test suite; removed when the session ends\n"
        "define('DB_NAME', 'wp');\ndefine('DB_USER', 'wp');\n"
        f"define('DB_PASSWORD', '{db_password}');\ndefine('DB_HOST', 'localhost:{sock}');\n"
        f"define('WP_CONTENT_DIR', '{content}');\n"
        "$gw_host = preg_replace('/[^A-Za-z0-9.:\\[\\]-]/', '', $_SERVER['HTTP_HOST'] ?? 'localhost');\n"
        "$gw_scheme = empty($_SERVER['HTTPS']) ? 'http://' : 'https://';\n"
        "define('WP_HOME', $gw_scheme . $gw_host);\ndefine('WP_SITEURL', $gw_scheme . $gw_host);\n"
        "define('WP_CONTENT_URL', $gw_scheme . $gw_host . '/wp-content');\n"
        "define('DISABLE_WP_CRON', true);\ndefine('WP_HTTP_BLOCK_EXTERNAL', true);\n"
        "define('AUTOMATIC_UPDATER_DISABLED', true);\ndefine('FS_METHOD', 'direct');\n" + salts
    )
    wp = WordPress(base, name, config, content, sock, mariadb)
    try:
        install = base / "install.php"
        install.write_text(
            "<?php\n"
            f"$_SERVER['HTTP_HOST'] = 'localhost'; $_SERVER['WORDPRESS_CONFIG'] = '{name}';\n"
            "$_SERVER['REQUEST_URI'] = '/'; define('WP_INSTALLING', true);\n"
            f"require '{WP_CORE}/wp-load.php';\n"
            "require_once ABSPATH . 'wp-admin/includes/upgrade.php';\n"
            f"$r = wp_install('Gateway test blog', '{ADMIN_USER}', 'admin@example.com', true, '', "
            f"'{ADMIN_PASSWORD}');\n"
            "update_option('permalink_structure', '/%postname%/');\n"
            "update_option('comment_moderation', 0); update_option('comment_previously_approved', 0);\n"
            "update_option('require_name_email', 1);\n"
            "echo 'installed user ', $r['user_id'], \"\\n\";\n"
        )
        out = subprocess.run([_need("php8.2"), str(install)], capture_output=True, text=True, timeout=120)
        if "installed user" not in out.stdout:
            raise RuntimeError(f"WordPress install failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    except BaseException:
        wp.stop()
        raise
    return wp
