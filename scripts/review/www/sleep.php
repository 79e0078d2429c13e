<?php
// sleep.php?s=SECONDS&id=ID: logs its start and end to the error log (PHP stderr)
$s = (float)($_GET['s'] ?? 2);
$id = $_GET['id'] ?? '-';
error_log("sleep.php start $id");
usleep((int)($s * 1e6));
error_log("sleep.php end $id");
echo "slept $s id=$id\n";
