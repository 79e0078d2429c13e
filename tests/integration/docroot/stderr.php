<?php
error_log("a line for the error log from stderr.php");
echo "logged";
