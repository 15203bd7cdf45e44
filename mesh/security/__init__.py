"""Transport security and request guards shared by the router and the runtime.

- :mod:`mesh.security.guard`: wraps a server's method handlers at registration so
  undecodable messages are INVALID_ARGUMENT and protected methods need a token or
  a client-certificate identity (no per-call cost for methods left unguarded).
- :mod:`mesh.security.tokens`: bearer tokens from a file, re-read when it changes.
- :mod:`mesh.security.tls`: server and channel credentials from PEM files
  (server certificates re-read on change).
- :mod:`mesh.security.certs`: a local CA and certificates for ``meshserve up --tls``.
- :mod:`mesh.security.paths`: the runtime's allowed model roots.
"""
