<?php
// answers without reading php://input; echoes the request id
$id = $_SERVER['HTTP_X_ID'] ?? '-';
if (isset($_GET['sleep'])) usleep((int)($_GET['sleep']*1e6));
header('X-Id: '.$id);
echo "id=$id\n";
