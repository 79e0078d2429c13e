<?php
// ?file=: take an exclusive flock on it (the test holds it), then let go.
$f = fopen($_GET['file'], 'c');
flock($f, LOCK_EX);
flock($f, LOCK_UN);
echo "ok";
