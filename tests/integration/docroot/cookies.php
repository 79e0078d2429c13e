<?php
setcookie('first', 'one');
setcookie('second', 'two', ['path' => '/', 'httponly' => true]);
header('Content-Type: application/json');
echo json_encode($_COOKIE);
