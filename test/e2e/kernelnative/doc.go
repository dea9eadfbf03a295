// Package kernelnative holds the VM-tier end-to-end tests of kernel-native
// mode with the real kmeshd binary (files with the vmguest build tag; run by
// test/vm/vmtest, suite kn).
package kernelnative
