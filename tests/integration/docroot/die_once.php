<?php
// The first run for a marker dies like a segfaulting worker (SIGKILL, no
// output, no END_REQUEST); later runs answer. Every run is logged.
$marker = $_GET['marker'];
file_put_contents($marker . '.log', $_SERVER['REQUEST_METHOD'] . "\n", FILE_APPEND);
if (!file_exists($marker)) {
    touch($marker);
    posix_kill(getmypid(), 9);
}
echo 'ran';
