<?php
// ?file=&ms=: append 4 KiB and fsync it, again and again, for ms milliseconds.
$f = fopen($_GET['file'], 'a');
$until = microtime(true) + ((int)($_GET['ms'] ?? 1000)) / 1000;
$block = str_repeat('x', 4096);
while (microtime(true) < $until) {
    fwrite($f, $block);
    fflush($f);
    fsync($f);
}
echo "ok";
