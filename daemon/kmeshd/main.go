// Command kmeshd is the kmesh-go node daemon: it takes mesh configuration from a
// control plane and programs the kernel (eBPF, and kmesh.ko in kernel-native
// mode). This file only wires flags to packages; the logic lives in pkg/.
package main

import (
	"fmt"
	"os"

	"github.com/kmesh-go/kmesh/pkg/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("kmeshd", version.Get())
		return
	}
	fmt.Fprintln(os.Stderr, "kmeshd: the dataplane is not wired yet (issue #3); available: kmeshd version")
	os.Exit(2)
}
