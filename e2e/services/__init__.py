"""What the test world runs beside the cluster: registry.py (Debian's docker-registry
on 127.0.0.1, plain, TLS or with auth), token_server.py (a registry's Bearer token
service), pki.py (CAs and certificates for every server and client here)."""
