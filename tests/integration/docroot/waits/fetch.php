<?php
// ?url=: fetch it with curl (a slow local HTTP server in the waiting_on test).
$ch = curl_init($_GET['url'] ?? 'http://127.0.0.1/');
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_setopt($ch, CURLOPT_TIMEOUT, 10);
$body = curl_exec($ch);
echo $body === false ? curl_error($ch) : "ok";
