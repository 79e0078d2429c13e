<?php
// sse.php?n=EVENTS&d=SECONDS_BETWEEN&status=CODE&err=I&id=ID: an event stream
header('Content-Type: text/event-stream');
header('X-Accel-Buffering: no');
$n = (int)($_GET['n'] ?? 1000);
$id = $_GET['id'] ?? '-';
if (isset($_GET['status'])) http_response_code((int)$_GET['status']);
error_log("sse.php start $id");
for ($i = 0; $i < $n; $i++) {
    echo "data: $id $i\n\n";
    @ob_flush(); flush();
    usleep((int)(($_GET['d'] ?? 0.2) * 1e6));
    if (isset($_GET['err']) && $i == (int)$_GET['err']) trigger_error("boom", E_USER_ERROR);
}
error_log("sse.php end $id");
