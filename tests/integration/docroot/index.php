<?php
// Front controller for tests: says which script ran and for what URI.
header('Content-Type: text/plain');
echo "front:", $_SERVER['SCRIPT_NAME'], " uri:", $_SERVER['REQUEST_URI'], " qs:", $_SERVER['QUERY_STRING'];
