# shellcheck shell=bash
# A Go toolchain for the scripts that build Go programs (setup-real, setup-cluster).
#
#   . scripts/lib/go.sh
#   go=$(pinned_go "$GO_TOOLCHAIN" "$GO_TOOLCHAIN_SHA256" "$cache")
#
# Prints the path of a `go` at least as new as the pinned toolchain (goX.Y.Z):
# the machine's own when it is new enough, else the toolchain module from the Go
# module proxy (what GOTOOLCHAIN would fetch), checked against the pinned
# sha256 and unpacked once into $cache/goX.Y.Z. Debian 12's golang is 1.19,
# too old even to fetch toolchains itself, hence the download here.

pinned_go() {
  local want=$1 sha=$2 cache=$3 go need have tc zip
  go=$(command -v go || echo /usr/local/go/bin/go)
  need=${want#go}
  have=$("$go" env GOVERSION 2>/dev/null | sed 's/^go//') || have=
  if [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" = "$need" ]; then
    echo "$go"
    return 0
  fi
  tc=$cache/$want
  if [ ! -x "$tc/bin/go" ]; then
    echo "fetching Go $need from the Go module proxy" >&2
    mkdir -p "$cache"
    zip=$cache/$want.zip
    curl -sSfL -o "$zip" \
      "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-$want.linux-amd64.zip"
    echo "$sha  $zip" | sha256sum -c --quiet \
      || { echo "the Go toolchain download does not match the pinned sha256" >&2; return 1; }
    /usr/bin/python3 - "$zip" "$tc" <<'PY'
import os, sys, zipfile
zip_path, dest = sys.argv[1:]
with zipfile.ZipFile(zip_path) as z:
    for info in z.infolist():
        name = info.filename.split("/", 2)[2]  # drop golang.org/toolchain@v.../
        if not name or name.endswith("/"):
            continue
        out = os.path.join(dest, name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        os.chmod(out, (info.external_attr >> 16) & 0o777 or 0o644)
PY
    rm -f "$zip"
  fi
  echo "$tc/bin/go"
}
