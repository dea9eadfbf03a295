/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* kfuncs exported by kmesh.ko (kmod/). Objects that include this header load
 * only where the module is loaded; the daemon checks the module's ABI version
 * over genetlink before it loads them. */
#ifndef KMESH_BPF_KFUNCS_H
#define KMESH_BPF_KFUNCS_H

extern __u32 bpf_kmesh_abi_version(void) __ksym;

#endif
