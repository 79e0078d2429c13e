<?php
// abort.php?s=SECONDS&id=ID: runs to its end whatever the client does; logs start and end
ignore_user_abort(true);
$id = $_GET['id'] ?? '-';
error_log("abort.php start $id");
sleep((int)($_GET['s'] ?? 3));
error_log("abort.php end $id");
echo "done $id\n";
