<?php
// Prints one php.ini setting as PHP sees it: ?name=output_buffering
echo ini_get($_GET["name"] ?? "");
