<?php
if (isset($_GET['status'])) { header('Location: /target', true, (int)$_GET['status']); exit; }
header('Location: http://example.com/elsewhere');
