// Command kmeshctl inspects and controls a running kmeshd through its admin API.
package main

import (
	"fmt"
	"os"

	"github.com/kmesh-go/kmesh/pkg/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("kmeshctl", version.Get())
		return
	}
	fmt.Fprintln(os.Stderr, "kmeshctl: commands arrive with the admin API (issue #8); available: kmeshctl version")
	os.Exit(2)
}
