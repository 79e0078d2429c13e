<?php
$mb = (int)($_GET['mb'] ?? 4);
$chunk = str_repeat('x', 1024*1024);
for ($i=0;$i<$mb;$i++) echo $chunk;
