// Package objs holds the bpf2go-generated bindings and the compiled BPF objects
// (committed, so `go build ./...` needs no clang). Regenerate with `make generate`;
// `make test` fails when they are stale.
package objs

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs Harness ../../../bpf/selftest/harness.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs -type kmod_abi_args KmodAbi ../../../bpf/selftest/kmod_abi.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs -type http_case KmodHttp ../../../bpf/selftest/kmod_http.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs KmodFilter ../../../bpf/selftest/kmod_filter.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs -type l7_listener_key -type l7_listener L7Defer ../../../bpf/l7_defer.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs -no-global-types -type l7_rule -type l7_decision L7Route ../../../bpf/l7_route.c -- -I../../../bpf/include -I../../../bpf/lib
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -D__TARGET_ARCH_x86" -target bpfel -go-package objs KmodDefer ../../../bpf/selftest/kmod_defer.c -- -I../../../bpf/include -I../../../bpf/lib
