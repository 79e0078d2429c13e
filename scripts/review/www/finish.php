<?php
$id = $_SERVER['HTTP_X_ID'] ?? '-';
header('X-Id: '.$id);
echo "id=$id\n";
echo str_repeat("y", (int)($_GET['out'] ?? 0));
fastcgi_finish_request();
usleep(mt_rand(0, 200000));
