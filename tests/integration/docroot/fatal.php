<?php
header('Content-Type: text/plain');
echo "before\n";
undefined_function_for_a_fatal_error();
