// SPDX-License-Identifier: GPL-2.0
/* kfuncs exported to BPF programs.
 *
 * Registration rules learned the hard way (see ARCHITECTURE.md, "Kernel module"):
 * register each kfunc set once per BPF hook; sock_ops and sk_msg have no kfunc
 * hook (-EINVAL) and a failed registration silently drops earlier ones, so any
 * error fails module init. All cgroup program types share one hook. */
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/btf_ids.h>
#include <linux/module.h>

#include "kmesh.h"

__bpf_kfunc_start_defs();

/* bpf_kmesh_abi_version - the module's ABI version, so a BPF program (and the
 * daemon through a syscall program) can verify it talks to a compatible module. */
__bpf_kfunc u32 bpf_kmesh_abi_version(void)
{
	return KMESH_ABI_VERSION;
}

__bpf_kfunc_end_defs();

BTF_KFUNCS_START(kmesh_kfunc_ids)
BTF_ID_FLAGS(func, bpf_kmesh_abi_version)
BTF_KFUNCS_END(kmesh_kfunc_ids)

static const struct btf_kfunc_id_set kmesh_kfunc_set = {
	.owner = THIS_MODULE,
	.set = &kmesh_kfunc_ids,
};

/* One entry per distinct hook: cgroup sock_addr (the connect hooks), syscall
 * (daemon probes and PROG_RUN tests), XDP and tc. */
static const enum bpf_prog_type kmesh_kfunc_prog_types[] = {
	BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
	BPF_PROG_TYPE_SYSCALL,
	BPF_PROG_TYPE_XDP,
	BPF_PROG_TYPE_SCHED_CLS,
};

int kmesh_kfuncs_init(void)
{
	int i, err;

	for (i = 0; i < ARRAY_SIZE(kmesh_kfunc_prog_types); i++) {
		err = register_btf_kfunc_id_set(kmesh_kfunc_prog_types[i], &kmesh_kfunc_set);
		if (err) {
			pr_err("kmesh: registering kfuncs for prog type %d: %d\n",
			       kmesh_kfunc_prog_types[i], err);
			return err;
		}
	}
	return 0;
}
