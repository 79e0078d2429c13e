<?php
// Burns about ?ms= milliseconds of CPU.
$end = microtime(true) + ((int)($_GET['ms'] ?? 5)) / 1000;
$x = 0; while (microtime(true) < $end) { $x++; }
echo "burned ", $x;
