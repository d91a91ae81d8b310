"""OCI distribution: image references, credentials, a streaming registry client, OCI layouts."""
