// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* VM-tier self-test: a syscall program (run with BPF_PROG_RUN) and a connect4
 * program that both call kmesh.ko's kfunc, proving module BTF and kfunc
 * registration work end to end. */
#include "common.h"
#include "kfuncs.h"

struct kmod_abi_args {
	__u32 abi_version;
};

__u64 connect_calls;
__u32 connect_abi;

SEC("syscall")
int kmod_abi_probe(struct kmod_abi_args *args)
{
	args->abi_version = bpf_kmesh_abi_version();
	return 0;
}

SEC("cgroup/connect4")
int kmod_abi_connect4(struct bpf_sock_addr *ctx)
{
	connect_abi = bpf_kmesh_abi_version();
	__sync_fetch_and_add(&connect_calls, 1);
	return SOCK_ALLOW;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
