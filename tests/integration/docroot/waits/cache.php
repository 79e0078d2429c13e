<?php
// ?host=&port=&n=: n Redis PINGs over RESP with a plain socket (no redis extension here).
$s = fsockopen($_GET['host'] ?? '127.0.0.1', (int)($_GET['port'] ?? 6379), $errno, $error, 5);
if (!$s) { http_response_code(502); exit("$error"); }
for ($i = 0; $i < (int)($_GET['n'] ?? 1); $i++) {
    fwrite($s, "*1\r\n\$4\r\nPING\r\n");
    fgets($s);
}
echo "ok";
