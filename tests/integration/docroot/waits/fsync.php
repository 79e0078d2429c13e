<?php
// ?dir=&ms=: for ms milliseconds, write 64 KiB to a new file in dir, fsync it
// and remove it, again and again: each fsync waits for a journal commit (how
// logs, sessions and caches written "safely" make PHP wait on the disk).
$dir = $_GET['dir'];
$until = microtime(true) + ((int)($_GET['ms'] ?? 1000)) / 1000;
$block = str_repeat('x', 64 * 1024);
for ($i = 0; microtime(true) < $until; $i++) {
    $path = sprintf('%s/w-%d-%d.tmp', $dir, getmypid(), $i);
    $f = fopen($path, 'w');
    fwrite($f, $block);
    fflush($f);
    fsync($f);
    fclose($f);
    unlink($path);
}
echo "ok";
