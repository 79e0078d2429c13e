<?php
// $_SERVER (and request data) as JSON: used by tests and scripts/compare-server-vars.
header('Content-Type: application/json');
$skip = ['PATH', 'HOME', 'USER', 'PHP_SELF', 'REQUEST_TIME', 'REQUEST_TIME_FLOAT', 'argv', 'argc'];
$server = array_diff_key($_SERVER, array_flip($skip));
ksort($server);
// The same $_SERVER in a header, so HEAD requests can be compared too.
header('X-Server-Vars: ' . base64_encode(json_encode($server)));
echo json_encode([
    'server' => $server,
    'get' => $_GET,
    'post' => $_POST,
    'files' => array_map(fn($f) => ['name' => $f['name'], 'size' => $f['size'], 'md5' => is_file($f['tmp_name']) ? md5_file($f['tmp_name']) : null], $_FILES),
    'cookies' => $_COOKIE,
    'input_md5' => md5(file_get_contents('php://input')),
    'input_length' => strlen(file_get_contents('php://input')),
    'pid' => getmypid(),
], JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES);
