<?php
// The demo front controller: every URL that is not a file lands here
// (try_files $uri $uri/ /index.php?$args), as in WordPress.
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
header('Content-Type: text/html; charset=utf-8');
?><!doctype html>
<html><head><title>gateway demo</title><link rel="stylesheet" href="/style.css"></head>
<body>
<h1>Hello from PHP <?= htmlspecialchars(PHP_VERSION) ?></h1>
<p>Served by <code><?= htmlspecialchars($_SERVER['SERVER_SOFTWARE']) ?></code>
 through php-fpm worker pid <code><?= getmypid() ?></code>.</p>
<p>You asked for <code><?= htmlspecialchars($path) ?></code>
<?php if ($path !== '/' && $path !== '/index.php'): ?>
 &mdash; a "pretty permalink" routed to the front controller.
<?php endif ?></p>
<ul>
  <li><a href="/some/pretty/permalink/">a pretty permalink</a></li>
  <li><a href="/info.php">phpinfo()</a></li>
  <li><a href="/server.php?x=1">$_SERVER as JSON</a></li>
  <li><a href="/style.css">a static file</a></li>
</ul>
</body></html>
