// SPDX-License-Identifier: GPL-2.0
/* kmesh.ko: in-kernel helpers for the kmesh-go dataplane (kernel-native mode).
 * Init order matters: kfuncs are registered last so no BPF program can call
 * into a half-initialised module; exit undoes init in reverse. */
#include <linux/init.h>
#include <linux/module.h>

#include "kmesh.h"

static int __init kmesh_init(void)
{
	int err;

	err = kmesh_kfuncs_init();
	if (err)
		return err;
	pr_info("kmesh: loaded, abi %d\n", KMESH_ABI_VERSION);
	return 0;
}

static void __exit kmesh_exit(void)
{
	/* kfunc sets are owned by the module's BTF and go away with it. */
	pr_info("kmesh: unloaded\n");
}

module_init(kmesh_init);
module_exit(kmesh_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmesh-go: in-kernel L7 helpers for a sidecarless service mesh");
MODULE_AUTHOR("kmesh-go authors");
