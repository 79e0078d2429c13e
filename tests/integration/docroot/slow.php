<?php
// Sleeps ?ms= milliseconds (like a slow query) and logs start/end for overlap checks.
$ms = (int)($_GET['ms'] ?? 100);
$log = $_GET['log'] ?? '';
if ($log) { file_put_contents($log, sprintf("start %d %.6f\n", getmypid(), microtime(true)), FILE_APPEND | LOCK_EX); }
usleep($ms * 1000);
if ($log) { file_put_contents($log, sprintf("end %d %.6f\n", getmypid(), microtime(true)), FILE_APPEND | LOCK_EX); }
header('Content-Type: text/plain');
echo "slept ", $ms, " pid ", getmypid();
