"""Automatic HTTPS: certificates from an ACME server (RFC 8555) for sites with
``[sites.X.tls] acme = true``.

Policy:

- **A small client of our own** on ``cryptography`` (ES256 JWS, P-256 keys,
  CSRs) and trio + h11 for HTTPS, rather than certbot's ``acme`` library
  (synchronous, on ``requests``: it would need a thread per call, and pulls in
  requests, josepy, pyOpenSSL and pyrfc3339 for what is ~600 lines here).
- **Sans-IO where it can be**: keys and signatures (``jws``), every message
  built and every answer of the ACME server validated (``messages``: the
  server is untrusted input; a bad answer is an ``AcmeError`` with one
  sentence, never a traceback), renewal timing (``policy``). The IO is thin:
  ``https`` (one HTTPS exchange), ``client`` (the order flow over an injected
  transport), ``manager`` (the renewal task).
- **One process** obtains and renews (the master, or the single process);
  worker processes only read the state directory (``tls.store``): the
  certificate bundle, and HTTP-01 key authorisations by file.
- **No issuance storm on restart**: a stored certificate for the same names
  that is not yet due is reused without contacting the CA. Renewal when a
  third of its lifetime is left; a failure is one log line and a retry with
  exponential backoff (1 min doubling to 1 h), remembered in ``meta.json`` so
  a restart does not hammer the CA.
"""
