// Command etcd is the etcd server of the pinned release (go.mod), as the
// upstream `etcd` binary runs it: that binary's own module (go.etcd.io/etcd/v3)
// carries replace directives, so `go install` cannot build it from the proxy,
// while its whole body is this one call into the server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
