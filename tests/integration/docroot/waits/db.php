<?php
// ?port=&host=&n=: n queries of SELECT SLEEP(0.5) on MariaDB over TCP (the waiting_on test).
$db = mysqli_connect($_GET['host'] ?? '127.0.0.1', 'gw', 'gw', '', (int)($_GET['port'] ?? 3306));
for ($i = 0; $i < (int)($_GET['n'] ?? 1); $i++) {
    mysqli_query($db, 'SELECT SLEEP(0.5)');
}
echo "ok";
