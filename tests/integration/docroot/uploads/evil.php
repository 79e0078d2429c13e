<?php echo "uploads must never run PHP";
