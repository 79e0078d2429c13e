<?php
http_response_code((int)($_GET['code'] ?? 418));
header('X-Custom: yes');
echo "custom status";
