<?php
// Server-sent events, paced by the test: event i+1 is sent only once the test
// has created ?dir=/go-i, i.e. once it has read event i.
header('Content-Type: text/event-stream');
header('Cache-Control: no-cache');
while (ob_get_level()) { ob_end_flush(); }
$dir = $_GET['dir'] ?? '/nonexistent';
for ($i = 0; $i < 3; $i++) {
    echo "data: event $i\n\n";
    flush();
    $deadline = microtime(true) + 10;
    while (!file_exists("$dir/go-$i") && microtime(true) < $deadline) { usleep(5000); }
}
