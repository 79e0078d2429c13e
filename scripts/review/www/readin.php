<?php
$id = $_SERVER['HTTP_X_ID'] ?? '-';
$in = file_get_contents('php://input');
header('X-Id: '.$id);
echo "id=$id len=".strlen($in)." md5=".md5($in)."\n";
