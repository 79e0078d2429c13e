<?php
// Sleeps ?ms= milliseconds (at most 10 s), like a page waiting on a slow
// database query: PHP is busy but burns no CPU (scripts/saturate php-waiting).
$ms = min(10000, max(0, (int)($_GET['ms'] ?? 100)));
usleep($ms * 1000);
header('Content-Type: text/plain');
echo "slept ", $ms, " ms in worker ", getmypid(), "\n";
