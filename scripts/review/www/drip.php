<?php
// drip.php?n=N&d=SECONDS: a buffered response (no X-Accel-Buffering) whose
// output trickles in: one flushed line every d seconds, so read_timeout never fires
$n = (int)($_GET['n'] ?? 15);
$d = (float)($_GET['d'] ?? 2);
error_log("drip.php start");
for ($i = 0; $i < $n; $i++) {
    echo "line $i\n";
    @ob_flush(); flush();
    usleep((int)($d * 1e6));
}
error_log("drip.php end");
