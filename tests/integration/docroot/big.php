<?php
// ?mb= megabytes of a repeating pattern, flushed in pieces.
$mb = (int)($_GET['mb'] ?? 10);
header('Content-Type: application/octet-stream');
$block = str_repeat('0123456789abcdef', 65536); // 1 MiB
for ($i = 0; $i < $mb; $i++) { echo $block; flush(); }
