/* SPDX-License-Identifier: GPL-2.0 */
/* Shared declarations of kmesh.ko. The ABI version is what the daemon and BPF
 * programs check before they rely on the module: bump it on any change to a
 * kfunc signature, a genetlink attribute or a struct shared with BPF. */
#ifndef KMESH_KMOD_H
#define KMESH_KMOD_H

#define KMESH_ABI_VERSION 1

int kmesh_kfuncs_init(void);

#endif
