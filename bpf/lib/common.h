/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Base include for every BPF entry file: kernel types (CO-RE, from the pinned
 * 6.12 BTF), libbpf helpers, and the few constants vmlinux.h cannot carry. */
#ifndef KMESH_BPF_COMMON_H
#define KMESH_BPF_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

/* Return codes of cgroup sock_addr programs. */
#define SOCK_ALLOW 1
#define SOCK_DENY  0

/* #defines that vmlinux.h (BTF) does not contain. */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* errno values (not in BTF). */
#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif
