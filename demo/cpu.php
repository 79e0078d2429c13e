<?php
// Burns about ?ms= milliseconds of CPU (at most 10 s), like an expensive page
// render (scripts/saturate php-cpu).
$end = microtime(true) + min(10000, max(0, (int)($_GET['ms'] ?? 5))) / 1000;
$x = 0; while (microtime(true) < $end) { $x++; }
header('Content-Type: text/plain');
echo "burned ", $x, " iterations\n";
